// mscnn-run: what model.so must look like before the dynamic loader may see it.
#ifndef MSCNN_RUN_ELF_H_
#define MSCNN_RUN_ELF_H_

#include <cstdint>
#include <string>

namespace mscnn {

// A Refusal unless the `size` bytes behind `fd` are an ELF shared object for
// `runner_arch` whose program headers, and every segment they describe, lie inside the
// file. The loader maps segments straight from the file: one that runs past its end
// would fault (SIGBUS) on first touch instead of failing cleanly. `label` names the
// library in messages.
void CheckElfLibrary(int fd, std::uint64_t size, const std::string& runner_arch,
                     const std::string& label);

}  // namespace mscnn

#endif  // MSCNN_RUN_ELF_H_
