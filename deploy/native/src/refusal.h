// mscnn-run: the one error type the runner reports to its caller.
#ifndef MSCNN_RUN_REFUSAL_H_
#define MSCNN_RUN_REFUSAL_H_

#include <stdexcept>
#include <string>

#include "text.h"

namespace mscnn {

// Everything that stops a run before a verdict (bad bundle, bad input, runtime failure)
// is a Refusal: main() prints it as one `error:` line and exits 2, so callers can tell
// "the model disagrees with its golden outputs" (exit 1) from "nothing was judged".
// The message is escaped when made (Printable), so what() is one printable line even when
// it quotes a manifest string holding a newline or a NUL.
class Refusal : public std::runtime_error {
 public:
  explicit Refusal(const std::string& what) : std::runtime_error(Printable(what)) {}
};

}  // namespace mscnn

#endif  // MSCNN_RUN_REFUSAL_H_
