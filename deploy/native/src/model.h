// The bundle's Relax VM executable, loaded through the TVM runtime and run on one input.
#ifndef MSCNN_RUN_MODEL_H_
#define MSCNN_RUN_MODEL_H_

#include <memory>
#include <string>

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

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace mscnn

#endif  // MSCNN_RUN_MODEL_H_
