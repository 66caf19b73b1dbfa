// calib/embedded_data.cpp — the bundled calibration and evaluation texts, embedded into the
// binary at build time with the assembler's .incbin (so an installed llmc needs no data files).
// The paths come from LLMC_SOURCE_DIR (CMake). Note: the build does not track these files as
// dependencies; touch this file after editing data/calibration.txt or data/heldout-sample.txt.
#include <string_view>

#include "calib/calib_data.h"

#define LLMC_INCBIN(sym, file)                                  \
  asm(".section .rodata\n"                                      \
      ".balign 16\n"                                            \
      ".global " #sym "_begin\n" #sym "_begin:\n"               \
      ".incbin \"" LLMC_SOURCE_DIR "/" file "\"\n"              \
      ".global " #sym "_end\n" #sym "_end:\n"                   \
      ".byte 0\n"                                               \
      ".previous\n")

LLMC_INCBIN(llmc_calib_text, "data/calibration.txt");
LLMC_INCBIN(llmc_eval_text, "data/heldout-sample.txt");

extern "C" const char llmc_calib_text_begin[], llmc_calib_text_end[];
extern "C" const char llmc_eval_text_begin[], llmc_eval_text_end[];

namespace llmc {

std::string_view default_calibration_text() {
  return {llmc_calib_text_begin, size_t(llmc_calib_text_end - llmc_calib_text_begin)};
}

std::string_view default_eval_text() {
  return {llmc_eval_text_begin, size_t(llmc_eval_text_end - llmc_eval_text_begin)};
}

}  // namespace llmc
