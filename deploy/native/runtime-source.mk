# The TVM runtime built from the C++ sources the pinned wheels ship, for architectures
# with no wheel (armv7). Included by the Makefile with CXX/ARCH_CXXFLAGS set; it also
# works natively (make ARCH=x86_64 RUNTIME=source), which is how the source-built
# runtime is checked against the wheel's on the build machine.
#
# What is built:
#   libtvm_ffi.so      tvm-ffi core and "extra" API, as listed in tvm_ffi/CMakeLists.txt
#                      (libbacktrace off: error messages carry no native stack trace)
#   libtvm_runtime.so  the parts of libtvm_runtime a CPU Relax VM needs: module and
#                      library loading, tensors, CPU device, workspace and memory
#                      managers, thread pool, the VM, its builtins and bytecode
# What is left out, with the reason:
#   vm/paged_kv_cache, kv_state, rnn_state, attn_backend, lm_support,
#   tensor_cache_support   LLM serving state, unused by a convolutional model
#   builtin_fp16.cc        needs compiler-rt's builtin_fp16.h, which the wheel lacks;
#                          libgcc on arm-linux-gnueabihf already provides __gnu_f2h_ieee
#   rpc/, extra/           remote sessions, disco and vendor libraries (cuDNN, TensorRT...)
# The wheel lacks the tvm/support headers the runtime includes; runtime/include and
# runtime/support hold versions written for this build (stream format in io.h).

FFI_DIR := $(TVM_FFI_SRC)/src/ffi
FFI_SOURCES := backtrace.cc backtrace_win.cc object.cc error.cc function.cc tensor.cc dtype.cc \
  container.cc init_once.cc custom_allocator.cc \
  $(addprefix extra/,structural_equal.cc structural_hash.cc structural_visit.cc \
    structural_mutate.cc visit_error_context.cc json_parser.cc json_writer.cc serialization.cc \
    dataclass.cc reflection_extra.cc module.cc library_module.cc library_module_system_lib.cc \
    library_module_dynamic_lib.cc env_context.cc env_c_api.cc)

TVM_RUNTIME_SOURCES := cpu_device_api.cc device_api.cc file_utils.cc logging.cc module.cc \
  tensor.cc thread_pool.cc threading_backend.cc workspace_pool.cc const_loader_module.cc \
  static_library.cc timer.cc memory/memory_manager.cc \
  vm/builtin.cc vm/bytecode.cc vm/executable.cc vm/vm.cc

# The runtime sources include "../support/x.h" relative to themselves, so they are
# copied into a tree whose support/ holds this build's headers.
RT_TREE := $(OBJ)/runtime-src
RT_SUPPORT_HEADERS := $(wildcard $(HERE)/runtime/support/*.h)
RT_SHIM_HEADERS := $(shell find $(HERE)/runtime/include -name '*.h')

FFI_OBJECTS := $(patsubst %.cc,$(OBJ)/ffi/%.o,$(FFI_SOURCES))
TVM_RUNTIME_OBJECTS := $(patsubst %.cc,$(OBJ)/tvm/%.o,$(TVM_RUNTIME_SOURCES))

# No -g: this is the wheels' own code, shipped stripped; without debug info the armv7
# build takes about a third less time (vm/builtin.cc: 21.6 -> 14.0 s).
RT_CXXFLAGS := -std=c++17 -O2 -fPIC -fno-fast-math $(ARCH_CXXFLAGS) -w \
  -isystem $(TVM_FFI_SRC)/include -isystem $(TVM_FFI_SRC)/3rdparty/dlpack/include
FFI_CXXFLAGS := $(RT_CXXFLAGS) -DTVM_FFI_EXPORTS -DTVM_FFI_USE_LIBBACKTRACE=0 \
  -DTVM_FFI_BACKTRACE_ON_SEGFAULT=0 -I$(FFI_DIR)
TVM_CXXFLAGS := $(RT_CXXFLAGS) -DTVM_RUNTIME_EXPORTS -DTVM_THREADPOOL_USE_OPENMP=0 \
  -DTVM_LOG_CUSTOMIZE=0 -I$(HERE)/runtime/include -I$(TVM_SRC)/include

$(OBJ)/ffi/%.o: $(FFI_DIR)/%.cc
	@mkdir -p $(@D)
	$(CXX) $(FFI_CXXFLAGS) -c $< -o $@

$(RT_TREE)/runtime/%.cc: $(TVM_SRC)/src/runtime/%.cc
	@mkdir -p $(@D)
	cp $< $@
$(RT_TREE)/runtime/%.h: $(TVM_SRC)/src/runtime/%.h
	@mkdir -p $(@D)
	cp $< $@
$(RT_TREE)/support/%.h: $(HERE)/runtime/support/%.h
	@mkdir -p $(@D)
	cp $< $@

RT_TREE_HEADERS := $(patsubst $(TVM_SRC)/src/runtime/%,$(RT_TREE)/runtime/%,\
  $(shell find $(TVM_SRC)/src/runtime -maxdepth 2 -name '*.h' -not -path '*/extra/*' \
    -not -path '*/rpc/*')) \
  $(patsubst $(HERE)/runtime/support/%,$(RT_TREE)/support/%,$(RT_SUPPORT_HEADERS))

$(OBJ)/tvm/%.o: $(RT_TREE)/runtime/%.cc $(RT_TREE_HEADERS) $(RT_SHIM_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(TVM_CXXFLAGS) -c $< -o $@

# --no-undefined: a source left out above must not leave a hole that only shows up as
# a dlopen failure on the device.
$(OUT)/lib/libtvm_ffi.so: $(FFI_OBJECTS) | $(OUT)/lib
	$(CXX) $(ARCH_CXXFLAGS) -shared -o $(OBJ)/libtvm_ffi.so $^ -Wl,-soname,libtvm_ffi.so \
	  -Wl,--no-undefined -ldl -pthread
	$(STRIP) --strip-unneeded -o $@ $(OBJ)/libtvm_ffi.so

$(OUT)/lib/libtvm_runtime.so: $(TVM_RUNTIME_OBJECTS) $(OUT)/lib/libtvm_ffi.so | $(OUT)/lib
	$(CXX) $(ARCH_CXXFLAGS) -shared -o $(OBJ)/libtvm_runtime.so $(TVM_RUNTIME_OBJECTS) \
	  -Wl,-soname,libtvm_runtime.so -Wl,--no-undefined -L$(OUT)/lib -ltvm_ffi -ldl -pthread \
	  -Wl,-rpath,'$$ORIGIN'
	$(STRIP) --strip-unneeded -o $@ $(OBJ)/libtvm_runtime.so
