// mscnn-run: what its commands share: the architecture it is built for, the checks a
// bundle must pass before its library is loaded, the device, and the checks on an input.
#ifndef MSCNN_RUN_RUNNER_H_
#define MSCNN_RUN_RUNNER_H_

#include <chrono>
#include <string>

#include "bundle.h"
#include "manifest.h"
#include "npy.h"
#include "options.h"

namespace mscnn {

#if defined(__x86_64__)
constexpr const char* kRunnerArch = "x86_64";
#elif defined(__aarch64__)
constexpr const char* kRunnerArch = "aarch64";
#elif defined(__arm__) && defined(__ARM_ARCH) && __ARM_ARCH >= 7
constexpr const char* kRunnerArch = "armv7";
#else
#error "mscnn-run targets x86_64, aarch64 and armv7 only (the bundle architectures)"
#endif

// Runtime libraries ship in lib/ next to the executable (the rpath says the same).
std::string RuntimeDir();

// Manifest strings on stdout, with control characters escaped: a golden case's name
// must not be able to print a forged "check: pass" line.
std::string Show(const std::string& text);

// The bundle's device; a Refusal if --device names another.
std::string DeviceFor(const Bundle& bundle, const Options& o);

// The checks that must pass before model.so may be loaded (loading runs its code).
void Admit(Bundle& bundle);

// A Refusal naming `label` and where the first NaN or Inf of `x` (the manifest's input
// shape) is, if it holds any.
void RequireFiniteInput(const Manifest& m, const Array& x, const std::string& label);

// A duration in milliseconds.
double Millis(std::chrono::steady_clock::duration d);

}  // namespace mscnn

#endif  // MSCNN_RUN_RUNNER_H_
