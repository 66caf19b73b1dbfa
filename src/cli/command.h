// cli/command.h — the CLI's subcommand table.
//
// Each subcommand lives in its own cli/cmd_<name>.cpp and registers itself with one
// LLMC_REGISTER_COMMAND(name, help, order, setup) line: `order` places it in `llmc --help`
// (ascending). `setup` receives the CLI11 subcommand, declares
// its options (CLI11 produces --help and rejects unknown options) and returns the function
// that runs the command after parsing; that function returns the process exit code.
// llmc::Error thrown from it is printed as "llmc: error: ..." with exit code 1; command-line
// parse errors (unknown option, bad value, missing option) as "llmc: error: ..." with exit 2.
// Numeric options use at_least()/in_range() below ("--x V: must be >= 1"), never CLI11's
// PositiveNumber (whose message prints a 308-digit bound). Commands that write use
// add_overwrite_flag() and check their output with check_output_path (core/fs.h).
#pragma once
#include <CLI/CLI.hpp>
#include <cmath>
#include <functional>
#include <sstream>
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

namespace detail {
inline std::string num(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}
inline CLI::Validator number_check(double lo, double hi, std::string rule) {
  return CLI::Validator(
      [lo, hi, rule](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || end != s.c_str() + s.size()) return "'" + s + "' is not a number";
        if (!std::isfinite(v)) return s + " is not a finite number";
        if (v < lo || v > hi) return s + " " + rule;
        return {};
      },
      "", "NUMBER");
}
}  // namespace detail

// A finite number >= lo: "must be >= lo".
inline CLI::Validator at_least(double lo) {
  return detail::number_check(lo, HUGE_VAL, "must be >= " + detail::num(lo));
}
// A finite number in [lo, hi]: "must be between lo and hi".
inline CLI::Validator in_range(double lo, double hi) {
  return detail::number_check(lo, hi, "must be between " + detail::num(lo) + " and " + detail::num(hi));
}
inline void add_overwrite_flag(CLI::App& app, bool& flag) {
  app.add_flag("--overwrite", flag,
               "replace an existing output that llmc wrote (never a directory holding other files, "
               "never an input)");
}

}  // namespace llmc::cli

#define LLMC_CAT2(a, b) a##b
#define LLMC_CAT(a, b) LLMC_CAT2(a, b)
#define LLMC_REGISTER_COMMAND(name, help, order, setup)    \
  static const int LLMC_CAT(llmc_cmd_reg_, __LINE__) = \
      ::llmc::cli::register_command(name, help, setup, order)
