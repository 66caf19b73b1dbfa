// core/error.h — the one error type of llmc.
//
// Contract: every failure caused by input (files, options, tensors) throws llmc::Error with a
// message that names the offending file and/or tensor. The CLI catches it, prints
// "llmc: error: <message>" and exits with status 1. Internal invariant violations use
// LLMC_CHECK, which throws the same type with the source location.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace llmc {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... R>
void append(std::ostringstream& os, T&& v, R&&... rest) {
  os << std::forward<T>(v);
  append(os, std::forward<R>(rest)...);
}
}  // namespace detail

// Concatenates its arguments with operator<< into one string.
template <typename... A>
std::string cat(A&&... a) {
  std::ostringstream os;
  detail::append(os, std::forward<A>(a)...);
  return os.str();
}

// Throws llmc::Error whose message is the concatenation of the arguments.
template <typename... A>
[[noreturn]] void fail(A&&... a) {
  throw Error(cat(std::forward<A>(a)...));
}

}  // namespace llmc

#define LLMC_CHECK(cond, ...)                                                               \
  do {                                                                                      \
    if (!(cond)) ::llmc::fail("internal check failed: " #cond " (", __FILE__, ":", __LINE__, \
                              ") ", ##__VA_ARGS__);                                         \
  } while (0)
