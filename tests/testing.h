// Shared helpers for the test executables.
#pragma once
#include <filesystem>
#include <functional>
#include <string>

namespace llmc::test {

// Linear modules of a dense Llama-style block (q, k, v, o, gate, up, down: model/arch.h).
inline constexpr int kDenseModules = 7;

// Repository root (compile-time LLMC_SOURCE_DIR).
std::filesystem::path repo_root();
// Fixture models bundled in the repo: repo_root()/models/<name>.
std::filesystem::path model_dir(const std::string& name);
// tests/data/<rel>.
std::filesystem::path data_path(const std::string& rel);
// ../shared/<rel> next to the repo, or empty when absent (tests then GTEST_SKIP with a message).
std::filesystem::path shared_path(const std::string& rel);
// A fresh empty temporary directory, removed at process exit.
std::filesystem::path temp_dir(const std::string& tag);
// Runs the llmc CLI with the given argument string through /bin/sh; returns the exit status
// and captures stdout+stderr into *output.
int run_cli(const std::string& args, std::string* output);
// The message of the llmc::Error that f throws, or "(no error)" (other exceptions propagate).
std::string error_of(const std::function<void()>& f);

}  // namespace llmc::test
