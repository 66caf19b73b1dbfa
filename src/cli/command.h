// cli/command.h — the CLI's subcommand table.
//
// Each subcommand lives in its own cli/cmd_<name>.cpp and registers itself with one
// LLMC_REGISTER_COMMAND(name, help, order, setup) line: `order` places it in `llmc --help`
// (ascending). `setup` receives the CLI11 subcommand, declares
// its options (CLI11 produces --help and rejects unknown options) and returns the function
// that runs the command after parsing; that function returns the process exit code.
// llmc::Error thrown from it is printed as "llmc: error: ..." with exit code 1.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace llmc::cli {

using RunFn = std::function<int()>;
using SetupFn = std::function<RunFn(CLI::App&)>;

struct Command {
  std::string name, help;
  SetupFn setup;
  int order;
};

std::vector<Command>& command_table();
int register_command(std::string name, std::string help, SetupFn setup, int order);

}  // namespace llmc::cli

#define LLMC_CAT2(a, b) a##b
#define LLMC_CAT(a, b) LLMC_CAT2(a, b)
#define LLMC_REGISTER_COMMAND(name, help, order, setup)    \
  static const int LLMC_CAT(llmc_cmd_reg_, __LINE__) = \
      ::llmc::cli::register_command(name, help, setup, order)
