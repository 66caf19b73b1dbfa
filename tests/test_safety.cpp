// Output safety, leaks, hangs and early checks (issue 10): every class has a test that fails
// without its fix. CLI tests spawn the llmc binary.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "calib/calib_data.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/threads.h"
#include "eval/eval.h"
#include "formats/checkpoint.h"
#include "formats/parquet.h"
#include "formats/safetensors.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using namespace llmc;
using nlohmann::json;

namespace {

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

int cli(const std::string& args, std::string* out = nullptr) {
  std::string o;
  const int rc = test::run_cli(args, &o);
  if (out) *out = o;
  return rc;
}

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

std::string tiny() { return test::model_dir("qwen3-tiny").string(); }

fs::path copy_tiny(const fs::path& dst) {
  fs::create_directories(dst.parent_path());
  fs::copy(test::model_dir("qwen3-tiny"), dst, fs::copy_options::recursive);
  return dst;
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

std::string gzip(const std::string& s) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, uLong(s.size())) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(s.data()));
  zs.avail_in = uInt(s.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = uInt(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

std::string random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 r(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = char(r() & 0xff);
  s[0] = char(0xc3), s[1] = char(0x28);  // invalid at offset 0 whatever the rest is
  return s;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

// Runs `f` in a forked child that must finish (exit 0) within `seconds`; a hang is killed and
// reported as a failure instead of hanging the test.
void expect_finishes(const std::function<bool()>& f, const std::string& what, int seconds = 20) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    setpgid(0, 0);  // its own process group: a hung llmc it spawned is killed with it
    _exit(f() ? 0 : 1);
  }
  setpgid(pid, pid);
  int st = 0;
  for (int i = 0; i < seconds * 20; ++i) {
    if (waitpid(pid, &st, WNOHANG) == pid) {
      EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << what << ": the check failed";
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(-pid, SIGKILL);
  waitpid(pid, &st, 0);
  ADD_FAILURE() << what << ": blocked for " << seconds << " s";
}

// Spawns llmc with `args`; `pre_exec` runs in the child (limits). Returns the pid.
pid_t spawn(const std::vector<std::string>& args, const std::function<void()>& pre_exec = {},
            const fs::path& log = "/dev/null") {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    if (pre_exec) pre_exec();
    std::vector<char*> argv = {const_cast<char*>(LLMC_CLI_PATH)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(LLMC_CLI_PATH, argv.data());
    _exit(127);
  }
  return pid;
}

}  // namespace

// ------------------------------------------------------------------ data loss: existing outputs

TEST(OutputSafety, ExistingDirectoryIsRefusedAndNeverWiped) {
  const fs::path d = test::temp_dir("safe-train");
  const fs::path train = d / "checkpoint";
  fs::create_directory(train);
  write_text_file(train / "optimizer.pt", "optimizer state");
  write_text_file(train / "README.md", "notes");
  std::string out;
  // Without --overwrite: refused, naming the path and the flag.
  EXPECT_EQ(1, cli("-q quantize -i " + q(tiny()) + " -o " + q(train) + " -m fp16 --no-eval", &out));
  EXPECT_TRUE(has(out, "llmc: error:") && has(out, train.string()) && has(out, "--overwrite")) << out;
  // With --overwrite: still refused, the directory was not written by llmc.
  EXPECT_EQ(1, cli("-q quantize -i " + q(tiny()) + " -o " + q(train) + " -m fp16 --no-eval --overwrite", &out));
  EXPECT_TRUE(has(out, "not written by llmc")) << out;
  EXPECT_EQ(1, cli("-q convert -i " + q(tiny()) + " -o " + q(train) + " --overwrite", &out));
  EXPECT_EQ(read_text_file(train / "optimizer.pt"), "optimizer state");
  EXPECT_EQ(read_text_file(train / "README.md"), "notes");
  EXPECT_EQ(entries(train), (std::vector<std::string>{"README.md", "optimizer.pt"}));
  EXPECT_EQ(entries(d), std::vector<std::string>{"checkpoint"});
}

TEST(OutputSafety, OverwriteReplacesOnlyADirectoryLlmcWrote) {
  const fs::path d = test::temp_dir("safe-over");
  const fs::path o = d / "out";
  std::string out;
  ASSERT_EQ(0, cli("-q convert -i " + q(tiny()) + " -o " + q(o), &out)) << out;
  EXPECT_TRUE(fs::exists(o / kManifestFile));
  // A second run: refused without --overwrite, replaced with it.
  EXPECT_EQ(1, cli("-q convert -i " + q(tiny()) + " -o " + q(o) + " --dtype fp16", &out));
  EXPECT_TRUE(has(out, "--overwrite")) << out;
  EXPECT_NE(open_checkpoint(o).tensors->get("model.norm.weight").info.dtype, DType::F16);
  ASSERT_EQ(0, cli("-q convert -i " + q(tiny()) + " -o " + q(o) + " --dtype fp16 --overwrite", &out)) << out;
  EXPECT_EQ(open_checkpoint(o).tensors->get("model.norm.weight").info.dtype, DType::F16);
  // A file the user added: even --overwrite refuses, and the file survives.
  write_text_file(o / "my-notes.txt", "mine");
  EXPECT_EQ(1, cli("-q quantize -i " + q(tiny()) + " -o " + q(o) + " -m fp16 --no-eval --overwrite", &out));
  EXPECT_TRUE(has(out, "my-notes.txt") && has(out, "llmc did not write")) << out;
  EXPECT_EQ(read_text_file(o / "my-notes.txt"), "mine");
  // Quantize over its own earlier output works with --overwrite.
  fs::remove(o / "my-notes.txt");
  ASSERT_EQ(0, cli("-q quantize -i " + q(tiny()) + " -o " + q(o) + " -m fp16 --no-eval --overwrite", &out)) << out;
  EXPECT_TRUE(fs::exists(o / "llmc_quant_report.json"));
  EXPECT_EQ(entries(d), std::vector<std::string>{"out"}) << "temporaries or old copies left behind";
  // An empty directory is fine without --overwrite (nothing to lose).
  fs::create_directory(d / "empty");
  EXPECT_EQ(0, cli("-q convert -i " + q(tiny()) + " -o " + q(d / "empty"), &out)) << out;
}

TEST(OutputSafety, ExistingFileIsRefusedWithoutOverwrite) {
  const fs::path d = test::temp_dir("safe-file");
  write_text_file(d / "notes.txt", "precious");
  std::string out;
  EXPECT_EQ(1, cli("-q quantize -i " + q(tiny()) + " --format parquet -o " + q(d / "notes.txt") +
                       " -m fp16 --no-eval", &out));
  EXPECT_TRUE(has(out, "notes.txt")) << out;
  EXPECT_EQ(1, cli("-q quantize -i " + q(tiny()) + " --format parquet -o " + q(d / "notes.txt") +
                       " -m fp16 --no-eval --overwrite", &out));
  EXPECT_TRUE(has(out, "*.parquet")) << out;
  EXPECT_EQ(read_text_file(d / "notes.txt"), "precious");
  // A Parquet output: refused when it exists, replaced with --overwrite.
  ASSERT_EQ(0, cli("-q convert -i " + q(tiny()) + " -o " + q(d / "m.parquet"), &out)) << out;
  EXPECT_EQ(1, cli("-q convert -i " + q(tiny()) + " -o " + q(d / "m.parquet"), &out));
  EXPECT_TRUE(has(out, "m.parquet") && has(out, "--overwrite")) << out;
  EXPECT_EQ(0, cli("-q convert -i " + q(tiny()) + " -o " + q(d / "m.parquet") + " --overwrite", &out)) << out;
  // calib -o onto an existing file.
  write_text_file(d / "a.txt", "some calibration text");
  EXPECT_EQ(1, cli("-q calib --from " + q(d / "a.txt") + " -o " + q(d / "notes.txt"), &out));
  EXPECT_EQ(read_text_file(d / "notes.txt"), "precious");
  EXPECT_EQ(0, cli("-q calib --from " + q(d / "a.txt") + " -o " + q(d / "notes.txt") + " --overwrite", &out)) << out;
  EXPECT_TRUE(has(read_text_file(d / "notes.txt"), "some calibration text"));
}

TEST(OutputSafety, NoCommandWritesOverOrAroundItsInputs) {
  const fs::path d = test::temp_dir("safe-inputs");
  const fs::path m = copy_tiny(d / "parent" / "model");
  const std::string config = read_text_file(m / "config.json");
  write_text_file(d / "text.txt", std::string(default_eval_text()));
  const std::string text = read_text_file(d / "text.txt");
  std::string out;
  // eval -o over the model's own config.json or its --ppl text, even with --overwrite.
  EXPECT_EQ(1, cli("-q eval --model " + q(m) + " --ppl " + q(d / "text.txt") + " --max-windows 1 -o " +
                       q(m / "config.json") + " --overwrite", &out));
  EXPECT_TRUE(has(out, "lies inside the input")) << out;
  EXPECT_EQ(1, cli("-q eval --model " + q(m) + " --ppl " + q(d / "text.txt") + " --max-windows 1 -o " +
                       q(d / "text.txt") + " --overwrite", &out));
  EXPECT_TRUE(has(out, "is the input")) << out;
  // calib -o over its --from file.
  EXPECT_EQ(1, cli("-q calib --from " + q(d / "text.txt") + " -o " + q(d / "text.txt") + " --overwrite", &out));
  EXPECT_TRUE(has(out, "is the input")) << out;
  // quantize / convert into an output that contains the input, lies inside it, or is it through
  // a symlink or "..".
  const std::string base = "-q quantize -m fp16 --no-eval --overwrite -i " + q(m) + " -o ";
  EXPECT_EQ(1, cli(base + q(d / "parent"), &out));
  EXPECT_TRUE(has(out, "contains the input")) << out;
  EXPECT_EQ(1, cli(base + q(m / "quantized"), &out));
  EXPECT_TRUE(has(out, "lies inside the input")) << out;
  fs::create_directory_symlink(m, d / "link");
  EXPECT_EQ(1, cli(base + q(d / "link"), &out));
  EXPECT_TRUE(has(out, "is the input")) << out;
  EXPECT_EQ(1, cli(base + q(m / ".." / "model"), &out));
  EXPECT_TRUE(has(out, "is the input")) << out;
  EXPECT_EQ(1, cli("-q convert --overwrite -i " + q(m) + " -o " + q(d), &out));
  EXPECT_TRUE(has(out, "contains the input")) << out;
  // The calibration / eval files are inputs too.
  EXPECT_EQ(1, cli("-q quantize -m int8 --overwrite -i " + q(m) + " --calibration-data " + q(d / "text.txt") +
                       " --format parquet -o " + q(d / "text.txt"), &out));
  EXPECT_EQ(read_text_file(m / "config.json"), config);
  EXPECT_EQ(read_text_file(d / "text.txt"), text);
  EXPECT_EQ(entries(m), entries(test::model_dir("qwen3-tiny")));
}

TEST(OutputSafety, CheckOutputPathRules) {
  const fs::path d = test::temp_dir("safe-rules");
  fs::create_directories(d / "in" / "sub");
  write_text_file(d / "f.txt", "x");
  const OutputRules none{false, {}};
  EXPECT_NO_THROW(check_output_path(d / "new", OutputKind::Directory, none));
  EXPECT_NO_THROW(check_output_path(d / "in" / "sub", OutputKind::Directory, none));  // empty
  EXPECT_TRUE(has(error_of([&] { check_output_path(d / "f.txt", OutputKind::File, none); }), "--overwrite"));
  EXPECT_NO_THROW(check_output_path(d / "f.txt", OutputKind::File, {true, {}}));
  EXPECT_TRUE(has(error_of([&] { check_output_path(d / "f.txt", OutputKind::Directory, {true, {}}); }),
                  "not a directory"));
  EXPECT_TRUE(has(error_of([&] { check_output_path(d / "in", OutputKind::File, {true, {}}); }), "is a directory"));
  EXPECT_TRUE(has(error_of([&] { check_output_path(d / "in", OutputKind::Directory, {true, {}}); }),
                  "not written by llmc"));
  EXPECT_TRUE(has(error_of([&] { check_output_path(d / "in/", OutputKind::Directory, {true, {d / "in"}}); }),
                  "is the input"));
  EXPECT_TRUE(has(error_of([&] { check_output_path(d / "x", OutputKind::File, {false, {d / "." / "x"}}); }),
                  "is the input"));
  fs::create_symlink(d / "nowhere", d / "dangling");
  EXPECT_TRUE(has(error_of([&] { check_output_path(d / "dangling", OutputKind::File, {true, {}}); }), "dangling"));
  EXPECT_THROW(check_output_path("", OutputKind::File, none), Error);
  // The library writer applies the same rule.
  EXPECT_THROW(make_checkpoint_writer(d / "in", CheckpointFormat::HF), Error);
  EXPECT_THROW(make_checkpoint_writer(d / "f.txt", CheckpointFormat::Parquet), Error);
}

// ------------------------------------------------------------------ data loss: signals, stale temporaries

namespace {

// Starts a quantize run long enough to interrupt, waits for its temporary, sends `sig`, and
// checks that the process died by it and left nothing behind.
void interrupt_quantize(int sig) {
  const fs::path d = test::temp_dir("safe-sig");
  const fs::path out = d / "out";
  const pid_t pid = spawn({"quantize", "--input", tiny(), "--output", out.string(), "--method", "fp8_static",
                           "--num-samples", "256", "--seq-len", "256", "--seed", "1"});
  ASSERT_GT(pid, 0);
  bool seen = false;
  for (int i = 0; i < 600 && !seen; ++i) {
    for (const auto& e : fs::directory_iterator(d)) seen |= has(e.path().filename().string(), ".tmp-");
    if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(seen) << "the temporary output never appeared";
  kill(pid, sig);
  int st = 0;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == sig) << strsignal(sig) << ": status " << st;
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(d)) ADD_FAILURE() << strsignal(sig) << " left behind: " << e.path();
}

}  // namespace

TEST(SignalCleanup, SigtermRemovesTemporaries) { interrupt_quantize(SIGTERM); }
TEST(SignalCleanup, SighupRemovesTemporaries) { interrupt_quantize(SIGHUP); }
TEST(SignalCleanup, SigpipeRemovesTemporaries) { interrupt_quantize(SIGPIPE); }
TEST(SignalCleanup, SigintRemovesTemporaries) { interrupt_quantize(SIGINT); }

TEST(SignalCleanup, FileSizeLimitIsACleanErrorThatLeavesNothing) {
  for (const char* fmt : {"hf", "parquet"}) {
    const fs::path d = test::temp_dir("safe-fsize");
    const fs::path out = d / (std::string("out") + (std::string(fmt) == "parquet" ? ".parquet" : ""));
    const fs::path log = test::temp_dir("safe-fsize-log") / "log.txt";
    const pid_t pid = spawn({"-q", "quantize", "-i", tiny(), "-o", out.string(), "-m", "fp16", "--no-eval"}, [] {
      struct rlimit rl{256 * 1024, 256 * 1024};  // the tiny model is ~8 MB
      setrlimit(RLIMIT_FSIZE, &rl);
    }, log);
    int st = 0;
    waitpid(pid, &st, 0);
    const std::string msg = read_text_file(log);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1) << fmt << ": status " << st << " " << msg;
    EXPECT_TRUE(has(msg, "llmc: error:") && has(msg, "too large")) << msg;
    for (const auto& e : fs::directory_iterator(d)) ADD_FAILURE() << fmt << " left behind: " << e.path();
  }
}

TEST(SignalCleanup, StaleTemporariesOfDeadProcessesAreRemoved) {
  const fs::path d = test::temp_dir("safe-stale");
  // A pid that is certainly dead: a child that exited and was reaped.
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  const std::string D = std::to_string(dead), me = std::to_string(getpid());
  fs::create_directory(d / ("out.tmp-" + D + "-0"));
  write_text_file(d / ("out.tmp-" + D + "-0") / "model.safetensors", "half");
  write_text_file(d / ("out.old-" + D + "-3"), "old");
  fs::create_directory(d / ("out.tmp-" + me + "-7"));  // a live process (this one): kept
  write_text_file(d / ("out.tmp-" + D + "-x"), "not llmc's pattern");
  write_text_file(d / ("other.tmp-" + D + "-0"), "another output's");
  std::string out;
  ASSERT_EQ(0, cli("convert -i " + q(tiny()) + " -o " + q(d / "out"), &out)) << out;
  EXPECT_TRUE(has(out, "stale temporary")) << out;
  std::vector<std::string> want = {"other.tmp-" + D + "-0", "out", "out.tmp-" + D + "-x", "out.tmp-" + me + "-7"};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(entries(d), want);
  EXPECT_EQ(remove_stale_temporaries(d / "other"), 1);
  EXPECT_EQ(remove_stale_temporaries(d / "other"), 0);
}

// ------------------------------------------------------------------ leaks: symlinked aux files

TEST(AuxFiles, SymlinksOutsideTheModelAndNonRegularFilesAreNotCopied) {
  const fs::path d = test::temp_dir("safe-aux");
  const fs::path m = copy_tiny(d / "m");
  write_text_file(d / "secret.txt", "TOP-SECRET-CONTENT");
  fs::remove(m / "tokenizer_config.json");
  fs::create_symlink(d / "secret.txt", m / "tokenizer_config.json");
  fs::create_symlink("/etc/passwd", m / "chat_template.jinja");
  fs::create_symlink("../secret.txt", m / "relative.txt");
  fs::create_symlink("generation_config.json", m / "alias.json");  // inside: copied
  fs::create_symlink(d / "gone.txt", m / "dangling.txt");
  ASSERT_EQ(0, ::mkfifo((m / "fifo.txt").c_str(), 0644));
  std::string out;
  ASSERT_EQ(0, cli("convert -i " + q(m) + " -o " + q(d / "hf"), &out)) << out;
  EXPECT_TRUE(has(out, "outside the model directory")) << out;
  EXPECT_TRUE(has(out, "fifo.txt")) << out;
  ASSERT_EQ(0, cli("-q convert -i " + q(m) + " -o " + q(d / "m.parquet"), &out)) << out;
  EXPECT_TRUE(has(out, "dangling.txt: a symbolic link to a missing file")) << out;
  for (const char* n : {"tokenizer_config.json", "chat_template.jinja", "relative.txt", "fifo.txt", "dangling.txt"})
    EXPECT_FALSE(fs::exists(d / "hf" / n)) << n;
  EXPECT_EQ(read_text_file(d / "hf" / "alias.json"), read_text_file(m / "generation_config.json"));
  const Checkpoint p = open_checkpoint(d / "m.parquet");
  for (const auto& [name, bytes] : p.aux_files) {
    EXPECT_FALSE(has(bytes, "TOP-SECRET") || has(bytes, "root:")) << name;
  }
  EXPECT_TRUE(p.aux_files.count("alias.json"));
  EXPECT_FALSE(p.aux_files.count("tokenizer_config.json"));
  // quantize copies aux files through the same reader.
  ASSERT_EQ(0, cli("-q quantize -i " + q(m) + " -o " + q(d / "q") + " -m fp16 --no-eval", &out)) << out;
  EXPECT_FALSE(fs::exists(d / "q" / "tokenizer_config.json"));
}

TEST(AuxFiles, HubCacheSnapshotSymlinksIntoBlobsAreCopied) {
  const fs::path d = test::temp_dir("safe-hub");
  const fs::path repo = d / "models--org--tiny";
  const fs::path snap = copy_tiny(repo / "snapshots" / "abc123");
  fs::create_directories(repo / "blobs");
  fs::rename(snap / "tokenizer_config.json", repo / "blobs" / "deadbeef");
  fs::create_symlink("../../blobs/deadbeef", snap / "tokenizer_config.json");
  const Checkpoint c = open_checkpoint(snap);
  ASSERT_TRUE(c.aux_files.count("tokenizer_config.json"));
  EXPECT_EQ(c.aux_files.at("tokenizer_config.json"), read_text_file(repo / "blobs" / "deadbeef"));
}

// ------------------------------------------------------------------ hangs and unbounded resources

TEST(Threads, CountsAreCappedWithClearMessages) {
  EXPECT_EQ(parse_thread_count("4", "--threads"), 4);
  EXPECT_EQ(parse_thread_count("+0012", "--threads"), 12);
  EXPECT_EQ(parse_thread_count(std::to_string(kMaxThreads), "--threads"), kMaxThreads);
  EXPECT_TRUE(has(error_of([] { parse_thread_count("0", "--threads"); }), "must be >= 1"));
  EXPECT_TRUE(has(error_of([] { parse_thread_count("-3", "--threads"); }), "must be >= 1"));
  EXPECT_TRUE(has(error_of([] { parse_thread_count("2000000000", "--threads"); }), "must be <= 1024"));
  EXPECT_TRUE(has(error_of([] { parse_thread_count("99999999999999999999999", "X"); }), "must be <= 1024"));
  EXPECT_TRUE(has(error_of([] { parse_thread_count("2e9", "LLMC_THREADS"); }), "LLMC_THREADS '2e9' is not an integer"));
  EXPECT_TRUE(has(error_of([] { parse_thread_count("", "X"); }), "not an integer"));
  EXPECT_THROW(set_num_threads(kMaxThreads + 1), Error);
  std::string out;
  EXPECT_EQ(2, cli("--threads 2000000000 inspect " + q(tiny()), &out));
  EXPECT_TRUE(has(out, "llmc: error: --threads 2000000000: must be <= 1024")) << out;
  EXPECT_EQ(2, cli("--threads 0 inspect " + q(tiny()), &out));
  EXPECT_TRUE(has(out, "must be >= 1")) << out;
  EXPECT_EQ(2, cli("inspect " + q(tiny()) + " --threads abc", &out));
  EXPECT_EQ(0, cli("--threads 3 inspect " + q(tiny()), &out)) << out;
  ::setenv("LLMC_THREADS", "2000000000", 1);
  const int rc = cli("inspect " + q(tiny()), &out);
  ::unsetenv("LLMC_THREADS");
  EXPECT_EQ(rc, 2);
  EXPECT_TRUE(has(out, "LLMC_THREADS 2000000000: must be <= 1024")) << out;
}

TEST(SafetensorsHeader, TwoHundredThousandTensorsParseInLinearTime) {
  // 200k zero-size tensors: the JSON callback parser took > 60 s on this header (quadratic);
  // the two-pass parse is linear. Asserts the result, not the time (printed for the record).
  constexpr int kN = 200000;
  std::string h = "{";
  for (int i = 0; i < kN; ++i) {
    if (i) h += ',';
    h += "\"t" + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]}";
  }
  h += ",\"__metadata__\":{\"format\":\"pt\"}}";
  std::string file(8, '\0');
  const uint64_t n = h.size();
  std::memcpy(file.data(), &n, 8);
  file += h;
  const auto t0 = std::chrono::steady_clock::now();
  const SafetensorsHeader sh =
      parse_safetensors_header(reinterpret_cast<const uint8_t*>(file.data()), file.size(), "many.safetensors");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ info ] %d-tensor safetensors header parsed in %.3f s\n", kN, s);
  ASSERT_EQ(sh.entries.size(), size_t(kN));
  EXPECT_EQ(sh.metadata.at("format"), "pt");
  for (const auto& e : sh.entries) ASSERT_EQ(e.info.nbytes, 0u);
  // The checks pass 1 does stay: duplicates and nesting.
  auto parse = [](const std::string& hdr) {
    std::string f(8, '\0');
    const uint64_t len = hdr.size();
    std::memcpy(f.data(), &len, 8);
    f += hdr;
    return error_of([&] { parse_safetensors_header(reinterpret_cast<const uint8_t*>(f.data()), f.size(), "x"); });
  };
  const std::string e = R"("a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]})";
  EXPECT_TRUE(has(parse("{" + e + "," + e + "}"), "duplicate key 'a'"));
  EXPECT_TRUE(has(parse(R"({"a":{"dtype":"F32","shape":[[[0]]],"data_offsets":[0,0]}})"), "nested too deeply"));
  EXPECT_TRUE(has(parse(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]})"), "not valid JSON"));
  EXPECT_EQ(parse("{" + e + "}"), "");
}

TEST(NonRegularInputs, FifosDevicesAndDirectoriesAreRefusedWithoutBlocking) {
  const fs::path d = test::temp_dir("safe-fifo");
  const fs::path m = copy_tiny(d / "m");
  fs::remove(m / "config.json");
  ASSERT_EQ(0, ::mkfifo((m / "config.json").c_str(), 0644));
  const fs::path t = copy_tiny(d / "t");
  fs::remove(t / "tokenizer.json");
  ASSERT_EQ(0, ::mkfifo((t / "tokenizer.json").c_str(), 0644));
  const fs::path w = copy_tiny(d / "w");
  fs::remove(w / "model.safetensors");
  ASSERT_EQ(0, ::mkfifo((w / "model.safetensors").c_str(), 0644));
  ASSERT_EQ(0, ::mkfifo((d / "data.txt").c_str(), 0644));
  ASSERT_EQ(0, ::mkfifo((d / "x.parquet").c_str(), 0644));
  auto refused = [](const std::function<void()>& f, const std::string& want) {
    return [f, want] {
      const std::string e = error_of(f);
      if (!has(e, want)) std::fprintf(stderr, "got: '%s', want '%s'\n", e.c_str(), want.c_str());
      return has(e, want);
    };
  };
  expect_finishes(refused([&] { open_checkpoint(m); }, "not a regular file (a FIFO)"), "config.json FIFO");
  expect_finishes(refused([&] { Tokenizer::load(t); }, "not a regular file (a FIFO)"), "tokenizer.json FIFO");
  expect_finishes(refused([&] { open_checkpoint(w); }, "not a regular file (a FIFO)"), "model.safetensors FIFO");
  expect_finishes(refused([&] { read_calibration_records(d / "data.txt"); }, "data.txt"), "calibration FIFO");
  expect_finishes(refused([&] { read_text_input(d / "data.txt"); }, "not a regular file (a FIFO)"), "eval text FIFO");
  expect_finishes(refused([&] { open_checkpoint(d / "x.parquet"); }, "not a regular file (a FIFO)"), "Parquet FIFO");
  expect_finishes(refused([&] { read_text_input("/dev/zero"); }, "character device"), "device");
  expect_finishes(refused([&] { read_text_input(d); }, "(a directory)"), "directory");
  expect_finishes(refused([&] { MappedFile f(d / "data.txt"); }, "not a regular file (a FIFO)"), "mmap FIFO");
  // Through the CLI: eval text and calibration data.
  expect_finishes([&] {
    std::string out;
    const int rc = cli("-q eval --model " + q(tiny()) + " --ppl " + q(d / "data.txt"), &out);
    return rc == 1 && has(out, "not a regular file (a FIFO)");
  }, "llmc eval --ppl FIFO");
  expect_finishes([&] {
    std::string out;
    const int rc = cli("-q quantize -i " + q(tiny()) + " -o " + q(d / "q") + " -m fp8_static --calibration-data " +
                       q(d / "data.txt"), &out);
    return rc == 1 && has(out, "data.txt") && !fs::exists(d / "q");
  }, "llmc quantize --calibration-data FIFO");
}

// ------------------------------------------------------------------ silent corruption of inputs

TEST(TextInputs, Utf8Validation) {
  EXPECT_EQ(first_invalid_utf8("plain ascii\n"), std::string::npos);
  EXPECT_EQ(first_invalid_utf8("h\xc3\xa9llo \xe4\xb8\xad \xf0\x9f\x98\x80"), std::string::npos);
  EXPECT_EQ(first_invalid_utf8("ab\xc0\xaf"), 2u);           // overlong '/'
  EXPECT_EQ(first_invalid_utf8("ab\xe0\x80\xaf"), 2u);       // overlong 3-byte
  EXPECT_EQ(first_invalid_utf8("a\xed\xa0\x80"), 1u);        // surrogate
  EXPECT_EQ(first_invalid_utf8("a\xf4\x90\x80\x80"), 1u);    // > U+10FFFF
  EXPECT_EQ(first_invalid_utf8("abc\xe4\xb8"), 3u);          // truncated
  EXPECT_EQ(first_invalid_utf8("a\x80"), 1u);                // stray continuation
  EXPECT_EQ(first_invalid_utf8(std::string("a\0b", 3)), 1u);  // NUL
  EXPECT_EQ(first_invalid_utf8("\xf5\x80\x80\x80"), 0u);
}

TEST(TextInputs, BinaryIsRefusedAndGzipIsReadTransparently) {
  const fs::path d = test::temp_dir("safe-text");
  write_bytes(d / "random.txt", random_bytes(4096, 1));
  write_bytes(d / "random.jsonl", random_bytes(4096, 2));
  const std::string e1 = error_of([&] { read_calibration_records(d / "random.txt"); });
  EXPECT_TRUE(has(e1, "random.txt") && has(e1, "not UTF-8") && has(e1, "offset 0")) << e1;
  EXPECT_TRUE(has(error_of([&] { read_calibration_records(d / "random.jsonl"); }), "not UTF-8"));
  write_text_file(d / "late.txt", "good text then \xff bad");
  EXPECT_TRUE(has(error_of([&] { read_text_input(d / "late.txt"); }), "byte 0xff at offset 15"));
  // gzip: .txt.gz, .jsonl.gz and a gzip stream under a plain name all read as their contents.
  const std::string doc = "The quick brown fox. \xc3\xa9t\xc3\xa9\n";
  const std::string jl = "{\"text\": \"one\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"two\"}]}\n";
  write_bytes(d / "doc.txt.gz", gzip(doc));
  write_bytes(d / "recs.jsonl.gz", gzip(jl));
  write_bytes(d / "twice.txt", gzip("part one, ") + gzip("part two"));  // concatenated members
  EXPECT_EQ(read_text_input(d / "doc.txt.gz"), doc);
  EXPECT_EQ(read_text_input(d / "twice.txt"), "part one, part two");
  auto r = read_calibration_records(d / "doc.txt.gz");
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].text, doc);
  r = read_calibration_records(d / "recs.jsonl.gz");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].text, "one");
  EXPECT_EQ(r[1].messages.at(0).content, "two");
  // gzip of binary, truncated and corrupt gzip.
  write_bytes(d / "bin.txt.gz", gzip(random_bytes(1000, 3)));
  EXPECT_TRUE(has(error_of([&] { read_text_input(d / "bin.txt.gz"); }), "after gzip decompression"));
  const std::string gz = gzip(std::string(5000, 'a'));
  write_bytes(d / "trunc.gz", gz.substr(0, gz.size() / 2));
  EXPECT_TRUE(has(error_of([&] { read_text_input(d / "trunc.gz"); }), "gzip"));
  std::string bad = gz;
  bad[12] = char(bad[12] ^ 0x55);
  bad[13] = char(bad[13] ^ 0x55);
  write_bytes(d / "bad.gz", bad);
  EXPECT_TRUE(has(error_of([&] { read_text_input(d / "bad.gz"); }), "gzip"));
  // Through the CLI: calib and eval name the file.
  std::string out;
  EXPECT_EQ(1, cli("-q calib --from " + q(d / "random.txt") + " -o " + q(d / "o.jsonl"), &out));
  EXPECT_TRUE(has(out, "random.txt") && has(out, "not UTF-8")) << out;
  EXPECT_EQ(1, cli("-q eval --model " + q(tiny()) + " --ppl " + q(d / "random.txt"), &out));
  EXPECT_TRUE(has(out, "random.txt") && has(out, "not UTF-8")) << out;
  write_bytes(d / "heldout.txt.gz", gzip(std::string(default_eval_text())));
  EXPECT_EQ(0, cli("-q eval --model " + q(tiny()) + " --max-windows 1 --ppl " + q(d / "heldout.txt.gz"), &out))
      << out;
}

// ------------------------------------------------------------------ late checks and silent defaults

TEST(EarlyChecks, QuantizeChecksEverythingBeforeTheLongWork) {
  const fs::path d = test::temp_dir("safe-early");
  write_bytes(d / "eval.bin", random_bytes(2000, 4));
  std::string out;
  // Bad eval data / eval window: refused before any output was written (the old code failed
  // only after committing the quantized model).
  EXPECT_EQ(1, cli("-q quantize -i " + q(tiny()) + " -o " + q(d / "a") + " -m fp16 --eval-data " +
                       q(d / "eval.bin"), &out));
  EXPECT_TRUE(has(out, "eval.bin") && has(out, "not UTF-8")) << out;
  EXPECT_FALSE(fs::exists(d / "a"));
  EXPECT_EQ(1, cli("-q quantize -i " + q(tiny()) + " -o " + q(d / "b") + " -m fp16 --eval-seq-len 5000", &out));
  EXPECT_TRUE(has(out, "--eval-seq-len 5000 exceeds the model's max_position_embeddings 4096")) << out;
  EXPECT_FALSE(fs::exists(d / "b"));
  EXPECT_EQ(1, cli("-q quantize -i " + q(tiny()) + " -o " + q(d / "c") + " -m fp16 --eval-data " +
                       q(d / "missing.txt"), &out));
  EXPECT_TRUE(has(out, "missing.txt")) << out;
  EXPECT_FALSE(fs::exists(d / "c"));
  // A broken tokenizer is found before calibration or output.
  const fs::path m = copy_tiny(d / "m");
  write_text_file(m / "tokenizer.json", "{\"model\": 1}");
  EXPECT_EQ(1, cli("-q quantize -i " + q(m) + " -o " + q(d / "e") + " -m fp16", &out));
  EXPECT_TRUE(has(out, "tokenizer.json")) << out;
  EXPECT_FALSE(fs::exists(d / "e"));
  EXPECT_EQ(entries(d), (std::vector<std::string>{"eval.bin", "m"}));
}

TEST(EarlyChecks, WindowsLongerThanTheModelAreRefusedWithOneMessage) {
  const fs::path d = test::temp_dir("safe-window");
  write_text_file(d / "t.txt", std::string(default_eval_text()));
  std::string out;
  const std::string msg = " 5000 exceeds the model's max_position_embeddings 4096";
  EXPECT_EQ(1, cli("-q calib --model " + q(tiny()) + " --from " + q(d / "t.txt") + " --seq-len 5000 --num-samples 1 -o " +
                       q(d / "c.jsonl"), &out));
  EXPECT_TRUE(has(out, "--seq-len" + msg)) << out;
  EXPECT_EQ(1, cli("-q eval --model " + q(tiny()) + " --ppl " + q(d / "t.txt") + " --ctx 5000", &out));
  EXPECT_TRUE(has(out, "--ctx" + msg)) << out;
  EXPECT_EQ(1, cli("-q quantize -i " + q(tiny()) + " -o " + q(d / "q") + " -m fp8_static --seq-len 5000 --num-samples 1",
                   &out));
  EXPECT_TRUE(has(out, "--seq-len" + msg)) << out;
  EXPECT_EQ(entries(d), std::vector<std::string>{"t.txt"});
}

namespace {

// qwen3-tiny with model.norm.weight (copied through quantization unchanged) set to the largest
// finite bfloat16: loads (every weight is finite) but its logits overflow to inf / nan.
fs::path nan_model(const fs::path& dir) {
  copy_tiny(dir);
  const fs::path st = dir / "model.safetensors";
  std::string bytes = read_text_file(st);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const json h = json::parse(bytes.substr(8, n));
  const auto& e = h["model.norm.weight"];
  EXPECT_EQ(e["dtype"], "BF16");
  const uint64_t begin = e["data_offsets"][0].get<uint64_t>(), end = e["data_offsets"][1].get<uint64_t>();
  for (uint64_t at = begin; at < end; at += 2) {
    const uint16_t big = 0x7f7f;
    std::memcpy(bytes.data() + 8 + n + at, &big, 2);
  }
  write_bytes(st, bytes);
  return dir;
}

}  // namespace

TEST(NonFinite, NonFinitePerplexityEndsWithAnError) {
  const fs::path d = test::temp_dir("safe-nan");
  const fs::path m = nan_model(d / "m");
  write_text_file(d / "t.txt", std::string(default_eval_text()));
  std::string out;
  EXPECT_EQ(1, cli("-q eval --model " + q(m) + " --ppl " + q(d / "t.txt") + " --max-windows 1", &out));
  EXPECT_TRUE(has(out, "llmc: error:") && has(out, "perplexity is ")) << out;
  EXPECT_EQ(1, cli("-q quantize -i " + q(m) + " -o " + q(d / "q") + " -m int8 --eval-tokens 256", &out));
  EXPECT_TRUE(has(out, "llmc: error: quality check") && has(out, "perplexity is ")) << out;
  EXPECT_TRUE(has(error_of([] { check_finite_ppl(INFINITY, "m"); }), "m: perplexity is inf"));
  EXPECT_EQ(error_of([] { check_finite_ppl(12.5, "m"); }), "");
}

TEST(NonFinite, GenerateRefusesNonFiniteOrNegativeTemperature) {
  std::string out;
  for (const char* t : {"nan", "inf", "-1", "-inf"}) {
    EXPECT_EQ(2, cli("generate --model " + q(tiny()) + " --prompt hi --max-tokens 1 --temperature " + t, &out)) << t;
    EXPECT_TRUE(has(out, "llmc: error:") && has(out, "--temperature")) << out;
  }
  EXPECT_EQ(0, cli("-q generate --model " + q(tiny()) + " --prompt hi --max-tokens 2 --temperature 0.7", &out)) << out;
}

TEST(CliUsage, ParseErrorsHaveThePrefixAndExitTwo) {
  std::string out;
  EXPECT_EQ(2, cli("convert --input x --output y --frobnicate", &out));
  EXPECT_EQ(out.rfind("llmc: error:", 0), 0u) << out;
  EXPECT_EQ(2, cli("convert --input x", &out));  // --output is required
  EXPECT_TRUE(has(out, "llmc: error:") && has(out, "--output")) << out;
  EXPECT_EQ(2, cli("quantize -i x -o y -m int8 --num-samples 0", &out));
  EXPECT_TRUE(has(out, "llmc: error: --num-samples: 0 must be >= 1")) << out;
  EXPECT_FALSE(has(out, "308") || has(out, "1.79769")) << out;
  EXPECT_EQ(2, cli("eval --model x --ppl y --ctx 1", &out));
  EXPECT_TRUE(has(out, "must be between 2 and 1048576")) << out;
  EXPECT_EQ(2, cli("eval --model x --ppl y --max-windows -1", &out));
  EXPECT_TRUE(has(out, "must be >= 0")) << out;
  EXPECT_EQ(2, cli("quantize -i x -o y -m int8 --num-samples abc", &out));
  EXPECT_TRUE(has(out, "'abc' is not a number")) << out;
  EXPECT_EQ(2, cli("frobnicate", &out));
  EXPECT_EQ(0, cli("--help", &out));
  EXPECT_TRUE(has(out, "quantize")) << out;
  EXPECT_EQ(0, cli("quantize --help", &out));
  EXPECT_TRUE(has(out, "--overwrite")) << out;
  EXPECT_EQ(0, cli("--version", &out));
}
