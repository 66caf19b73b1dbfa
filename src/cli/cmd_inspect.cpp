// llmc inspect — architecture, tensor table, totals, quantization config, memory footprint.
#include <cstdio>

#include "cli/command.h"
#include "formats/inspect.h"
#include "quant/layouts.h"

namespace {

using namespace llmc;

cli::RunFn setup(CLI::App& app) {
  struct Opts {
    std::string path;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("path", o->path, "HF model directory, .parquet file or .safetensors file")->required();
  app.add_flag("--json", o->json, "print the report as JSON");
  return [o]() -> int {
    Checkpoint c = open_for_inspect(o->path);
    nlohmann::json rep = inspect_checkpoint(c);
    rep["vllm"] = vllm_loadability(*c.tensors, c.config);
    const std::string text = o->json ? rep.dump(2) + "\n" : format_inspect_text(rep);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  };
}

}  // namespace

LLMC_REGISTER_COMMAND("inspect", "show a checkpoint's architecture, tensors, quantization and memory footprint", 40,
                      setup);
