// llmc — command line entry point. Subcommands come from the table in cli/command.h.
#include <algorithm>
#include <cstdio>
#include <memory>

#include "backend/backend.h"
#include "cli/command.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/threads.h"

namespace llmc::cli {

std::vector<Command>& command_table() {
  static std::vector<Command> t;
  return t;
}

int register_command(std::string name, std::string help, SetupFn setup, int order) {
  command_table().push_back({std::move(name), std::move(help), std::move(setup), order});
  return 0;
}

}  // namespace llmc::cli

int main(int argc, char** argv) {
  using namespace llmc;
  CLI::App app{"llmc — compress large language models after training (quantize, convert, "
               "calibrate, evaluate, inspect, generate)"};
  app.set_version_flag("--version", std::string("llmc ") + LLMC_VERSION);
  app.require_subcommand(1);
  std::string threads_opt;
  bool quiet_flag = false;
  app.add_option("--threads", threads_opt,
                 cat("worker threads, 1..", kMaxThreads, " (default: $LLMC_THREADS, else all cores)"));
  app.add_flag("-q,--quiet", quiet_flag, "print only warnings, errors and final results");
  std::string device_opt;
  app.add_option("--device", device_opt,
                 "compute device for GEMMs, Hessians and dequantization: cpu, cuda or auto "
                 "(default: $LLMC_DEVICE, else cpu)")
      ->check(CLI::IsMember({"cpu", "cuda", "gpu", "auto"}));
  bool cuda_fp32 = false;
  app.add_flag("--cuda-fp32", cuda_fp32,
               "GPU forwards and attention in full fp32 (default: TF32 tensor cores, or "
               "$LLMC_CUDA_TF32=0 for fp32; statistics, solvers and error reports are always fp32)");
  app.fallthrough();

  auto& table = cli::command_table();
  std::sort(table.begin(), table.end(), [](const auto& a, const auto& b) { return a.order < b.order; });
  std::vector<std::pair<CLI::App*, cli::RunFn>> subs;
  for (auto& c : table) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    subs.emplace_back(sub, c.setup(*sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // Usage errors: the same prefix as every other error, exit status 2.
    std::fprintf(stderr, "llmc: error: %s\n(run 'llmc --help' or 'llmc COMMAND --help' for usage)\n", e.what());
    return 2;
  }
  set_quiet(quiet_flag);
  try {
    const int threads = threads_opt.empty() ? threads_from_env() : parse_thread_count(threads_opt, "--threads");
    if (threads > 0) set_num_threads(threads);
  } catch (const llmc::Error& e) {
    std::fprintf(stderr, "llmc: error: %s\n", e.what());
    return 2;
  }
  install_signal_cleanup();
  if (cuda_fp32) backend::set_cuda_tf32(false);
  try {
    if (device_opt.empty()) backend::init_device_from_env();
    else backend::set_device(backend::parse_device(device_opt));
    for (auto& [sub, run] : subs) {
      if (sub->parsed()) return run();
    }
  } catch (const llmc::Error& e) {
    std::fprintf(stderr, "llmc: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llmc: error: %s\n", e.what());
    return 1;
  }
  return 1;
}
