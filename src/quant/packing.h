// quant/packing.h — bit packing of integer codes into 32-bit words, as the on-disk layouts do it.
//
// Three schemes, all little-endian words, all LSB-first:
//  * Stream (AutoGPTQ): the codes form one continuous bit stream; code k occupies stream bits
//    [k·bits, (k+1)·bits), stream bit j is bit (j mod 32) of word j / 32. For 2/4/8 bits this is
//    plain "32/bits codes per word"; for 3 bits it is AutoGPTQ's scheme where every 32 codes fill
//    3 words and codes 10 and 21 straddle word boundaries. Words = ceil(n·bits / 32). The
//    current compressed-tensors pack_to_int32 (dense since 2026) is this scheme too.
//  * Fixed (compressed-tensors pack_to_int32 before 2026, read only): floor(32/bits) codes per
//    word, code k in word
//    k / per_word at bit (k mod per_word)·bits; leftover high bits and padding codes are 0.
//    Words = ceil(n / per_word).
//  * Awq (AutoAWQ GEMM, 4 bits only): 8 codes per word, code k in word k / 8 at nibble
//    kAwqSlot[k mod 8] (the interleave [0,2,4,6,1,3,5,7]: nibble j holds code kAwqOrder[j]).
// Codes are unsigned (0 .. 2^bits - 1); pack checks the range and throws llmc::Error.
#pragma once
#include <cstdint>

namespace llmc {

enum class PackScheme : uint8_t { Stream, Fixed, Awq };

inline constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // nibble j holds code kAwqOrder[j]
inline constexpr int kAwqSlot[8] = {0, 4, 1, 5, 2, 6, 3, 7};   // code c sits in nibble kAwqSlot[c]

// Number of 32-bit words `n` codes of `bits` bits occupy.
int64_t packed_words(int64_t n, int bits, PackScheme scheme);
// Packs n codes (stride `stride` between consecutive codes) into packed_words() words at
// `words` (stride `wstride` between consecutive words).
void pack_codes(const int32_t* codes, int64_t stride, int64_t n, int bits, PackScheme scheme,
                uint32_t* words, int64_t wstride);
// Inverse of pack_codes: writes n codes (unsigned) with stride `stride`.
void unpack_codes(const uint32_t* words, int64_t wstride, int64_t n, int bits, PackScheme scheme,
                  int32_t* codes, int64_t stride);

}  // namespace llmc
