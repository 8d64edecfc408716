// The bundle's Relax VM executable, loaded through the TVM runtime and run on one input.
#ifndef MSCNN_RUN_MODEL_H_
#define MSCNN_RUN_MODEL_H_

#include <memory>
#include <string>

#include "manifest.h"
#include "npy.h"

namespace mscnn {

class Model {
 public:
  // Loads the shared library at `path` (dlopen: it must already be verified; `label`
  // names it in messages) and sets up the VM on `device` ("cpu" or "cuda").
  // `runtime_dir` holds the runtime libraries shipped next to the runner, where optional
  // device support (libtvm_runtime_cuda.so) is looked up.
  Model(const std::string& path, const std::string& label, const std::string& device,
        const std::string& runtime_dir);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Runs "main" on one float32 array and returns its float32 output, copied to the host.
  Array Run(const Array& input);

  // A stream bundle's step, main(ecg, n_valid, *states) -> (frames, valid, *states):
  // ResetStates sets every state to zeros of its manifest shape and dtype; Step runs one
  // hop (1, leads, hop) with n_valid samples of it real, keeps the new states and returns
  // the frames (1, channels, hop / reduction) with valid = [start, stop) of them.
  void ResetStates(const std::vector<StateSpec>& states);
  Array Step(const Array& hop, std::int64_t n_valid, std::int64_t valid[2]);

  struct State;  // the runtime's objects, opaque to callers

 private:
  std::unique_ptr<State> state_;
};

}  // namespace mscnn

#endif  // MSCNN_RUN_MODEL_H_
