#include "model.h"

#include <dlfcn.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/optional.h>
#include <tvm/ffi/string.h>

#include <exception>
#include <vector>

#include "refusal.h"

namespace mscnn {
namespace ffi = tvm::ffi;

namespace {

// tvm/runtime/memory/memory_manager.h: AllocatorType::kPooled. The pooled allocator is
// what relax.VirtualMachine uses by default, so golden data and runner agree on it.
constexpr int kPooledAllocator = 2;

std::string OneLine(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

[[noreturn]] void RethrowAsRefusal(const std::string& stage) {
  try {
    throw;
  } catch (const Refusal&) {
    throw;
  } catch (const ffi::Error& e) {
    throw Refusal("TVM runtime failed while " + stage + ": " + e.kind() + ": " +
                  OneLine(e.message()));
  } catch (const std::exception& e) {
    throw Refusal("TVM runtime failed while " + stage + ": " + OneLine(e.what()));
  } catch (...) {
    throw Refusal("TVM runtime failed while " + stage + " with an unknown exception");
  }
}

ffi::Function Global(const char* name) {
  ffi::Optional<ffi::Function> f = ffi::Function::GetGlobal(name);
  if (!f.has_value()) {
    throw Refusal(std::string("the TVM runtime lacks the function ") + name +
                  "; lib/libtvm_runtime.so next to mscnn-run is not the one it was built with");
  }
  return *f;
}

ffi::Function Member(const ffi::Module& mod, const char* name, const std::string& why) {
  ffi::Optional<ffi::Function> f = mod->GetFunction(name, /*query_imports=*/true);
  if (!f.has_value()) throw Refusal(why);
  return *f;
}

}  // namespace

// Module and Function are non-nullable references; Optional lets them be filled in
// step by step, each step with its own error message.
struct Model::State {
  DLDevice device{kDLCPU, 0};
  ffi::Optional<ffi::Module> library;
  ffi::Optional<ffi::Module> vm;
  ffi::Optional<ffi::Function> main;
  ffi::Optional<ffi::Function> alloc;
  ffi::Optional<ffi::Function> copy_from_bytes;
  ffi::Optional<ffi::Function> copy_to_bytes;
  std::vector<ffi::Any> states;  // a stream step's, as the last step returned them
};

Model::Model(const std::string& path, const std::string& library, const std::string& device,
             const std::string& runtime_dir)
    : state_(new State) {
  State& s = *state_;
  if (device == "cuda") {
    // CUDA support is a separate runtime library that needs the CUDA driver; it is only
    // loaded for CUDA bundles so that CPU-only devices never need libcuda.
    const std::string cuda_runtime = runtime_dir + "/libtvm_runtime_cuda.so";
    if (::dlopen(cuda_runtime.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
      const char* why = ::dlerror();
      throw Refusal("cannot load TVM's CUDA runtime (" + OneLine(why ? why : cuda_runtime) +
                    "); this mscnn-run build or machine has no CUDA support: install the CUDA "
                    "driver and runtime it names, or run a cpu bundle");
    }
    s.device = DLDevice{kDLCUDA, 0};
  }

  ffi::Optional<ffi::Function> load_so;
  try {
    // The .so loader itself: Module::LoadFromFile picks it by the file name's extension,
    // which the verified copy's path (/proc/self/fd/N) does not have.
    load_so = Global("ffi.Module.load_from_file.so");
    s.alloc = Global("runtime.TVMTensorAllocWithScope");
    s.copy_from_bytes = Global("runtime.TVMTensorCopyFromBytes");
    s.copy_to_bytes = Global("runtime.TVMTensorCopyToBytes");
  } catch (...) {
    RethrowAsRefusal("starting up");
  }
  try {
    s.library = (*load_so)(path, "so").cast<ffi::Module>();
  } catch (...) {
    RethrowAsRefusal("loading " + library);
  }
  try {
    ffi::Function load = Member(*s.library, "vm_load_executable",
                                library + " holds no Relax VM executable (no vm_load_executable); "
                                "rebuild the bundle with `python -m compile build`");
    s.vm = load().cast<ffi::Module>();
    ffi::Function init = Member(*s.vm, "vm_initialization",
                                library + " is not a Relax VM executable (no vm_initialization)");
    // Same order as relax.VirtualMachine: the compute device, then the CPU that runs
    // shape functions, each as (device type, device id, allocator).
    if (s.device.device_type == kDLCPU) {
      init(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    } else {
      init(static_cast<int>(s.device.device_type), s.device.device_id, kPooledAllocator,
           static_cast<int>(kDLCPU), 0, kPooledAllocator);
    }
    s.main = Member(*s.vm, "main", library + " has no \"main\" function");
  } catch (...) {
    RethrowAsRefusal("setting up the virtual machine");
  }
}

Model::~Model() = default;

namespace {

ffi::Tensor Upload(Model::State& s, const std::vector<std::int64_t>& dims, DLDataType dtype,
                   const void* data, std::size_t bytes) {
  ffi::Shape shape(dims.begin(), dims.end());
  ffi::Tensor t = (*s.alloc)(shape, dtype, s.device, ffi::Optional<ffi::String>()).cast<ffi::Tensor>();
  (*s.copy_from_bytes)(t, const_cast<void*>(data), static_cast<std::int64_t>(bytes));
  return t;
}

std::size_t Elements(const DLTensor* t) {
  std::size_t count = 1;
  for (int i = 0; i < t->ndim; ++i) count *= static_cast<std::size_t>(t->shape[i]);
  return count;
}

}  // namespace

void Model::ResetStates(const std::vector<StateSpec>& specs) {
  State& s = *state_;
  try {
    s.states.clear();
    for (const StateSpec& spec : specs) {
      const std::int64_t element = StateElementBytes(spec.dtype);
      const std::uint8_t code = spec.dtype == "float32" ? kDLFloat
                                : spec.dtype == "uint8" ? kDLUInt
                                                        : kDLInt;
      const DLDataType dtype{code, static_cast<std::uint8_t>(8 * element), 1};
      std::size_t bytes = static_cast<std::size_t>(element);
      for (std::int64_t d : spec.shape) bytes *= static_cast<std::size_t>(d);
      std::vector<char> zeros(bytes, 0);
      s.states.emplace_back(Upload(s, spec.shape, dtype, zeros.data(), bytes));
    }
  } catch (...) {
    RethrowAsRefusal("setting up the stream's state");
  }
}

Array Model::Step(const Array& hop, std::int64_t n_valid, std::int64_t valid[2]) {
  State& s = *state_;
  Array out;
  try {
    const DLDataType f32{kDLFloat, 32, 1}, i64{kDLInt, 64, 1};
    ffi::Tensor x = Upload(s, hop.shape, f32, hop.data.data(), hop.data.size() * sizeof(float));
    ffi::Tensor n = Upload(s, {1}, i64, &n_valid, sizeof n_valid);
    std::vector<ffi::AnyView> args{x, n};
    for (const ffi::Any& state : s.states) args.emplace_back(state);
    ffi::Any result;
    (*s.main).CallPacked(args.data(), static_cast<std::int32_t>(args.size()), &result);
    auto tuple = result.try_cast<ffi::Array<ffi::Any>>();
    if (!tuple || tuple->size() != s.states.size() + 2) {
      throw Refusal("the stream step returned " + result.GetTypeKey() + ", not (frames, valid" +
                    " and " + std::to_string(s.states.size()) + " states); rebuild the bundle");
    }
    ffi::Optional<ffi::Tensor> frames = (*tuple)[0].as<ffi::Tensor>();
    ffi::Optional<ffi::Tensor> range = (*tuple)[1].as<ffi::Tensor>();
    if (!frames.has_value() || !range.has_value()) {
      throw Refusal("the stream step did not return tensors; rebuild the bundle");
    }
    const DLTensor* f = (*frames).GetDLTensorPtr();
    const DLTensor* v = (*range).GetDLTensorPtr();
    if (f->dtype.code != kDLFloat || f->dtype.bits != 32 || f->ndim != 3 ||
        v->dtype.code != kDLInt || v->dtype.bits != 64 || Elements(v) != 2) {
      throw Refusal("the stream step's outputs are not float32 frames (1, channels, n) and "
                    "int64 valid (2,); rebuild the bundle");
    }
    for (int i = 0; i < f->ndim; ++i) out.shape.push_back(f->shape[i]);
    out.data.resize(Elements(f));
    (*s.copy_to_bytes)(*frames, static_cast<void*>(out.data.data()),
                       static_cast<std::int64_t>(out.data.size() * sizeof(float)));
    (*s.copy_to_bytes)(*range, static_cast<void*>(valid), static_cast<std::int64_t>(16));
    for (std::size_t i = 0; i < s.states.size(); ++i) s.states[i] = (*tuple)[i + 2];
  } catch (...) {
    RethrowAsRefusal("running the stream step");
  }
  if (valid[0] < 0 || valid[0] > valid[1] || valid[1] > out.shape[2]) {
    throw Refusal("the stream step returned valid frames [" + std::to_string(valid[0]) + ", " +
                  std::to_string(valid[1]) + ") outside its " + std::to_string(out.shape[2]) +
                  " frames; rebuild the bundle");
  }
  return out;
}

Array Model::Run(const Array& input) {
  State& s = *state_;
  Array out;
  try {
    const DLDataType f32{kDLFloat, 32, 1};
    ffi::Shape shape(input.shape.begin(), input.shape.end());
    ffi::Tensor x =
        (*s.alloc)(shape, f32, s.device, ffi::Optional<ffi::String>()).cast<ffi::Tensor>();
    (*s.copy_from_bytes)(x, static_cast<void*>(const_cast<float*>(input.data.data())),
                      static_cast<std::int64_t>(input.data.size() * sizeof(float)));

    ffi::Any result = (*s.main)(x);
    ffi::Optional<ffi::Tensor> y = result.as<ffi::Tensor>();
    if (!y.has_value()) {
      // A model with one output may still come back as a one-element tuple.
      if (auto tuple = result.try_cast<ffi::Array<ffi::Any>>(); tuple && tuple->size() == 1) {
        y = (*tuple)[0].as<ffi::Tensor>();
      }
    }
    if (!y.has_value()) {
      throw Refusal("the model's \"main\" returned " + result.GetTypeKey() +
                    ", not a single tensor; rebuild the bundle");
    }
    const DLTensor* t = (*y).GetDLTensorPtr();
    if (t->dtype.code != kDLFloat || t->dtype.bits != 32 || t->dtype.lanes != 1) {
      throw Refusal("the model's output is not float32; rebuild the bundle");
    }
    std::size_t count = 1;
    for (int i = 0; i < t->ndim; ++i) {
      out.shape.push_back(t->shape[i]);
      count *= static_cast<std::size_t>(t->shape[i]);
    }
    out.data.resize(count);
    (*s.copy_to_bytes)(*y, static_cast<void*>(out.data.data()),
                    static_cast<std::int64_t>(count * sizeof(float)));
  } catch (...) {
    RethrowAsRefusal("running the model");
  }
  return out;
}

}  // namespace mscnn
