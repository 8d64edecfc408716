// mscnn-run --info: what a bundle is and whether this runner can run it, from its
// manifest alone (nothing is verified or loaded).
#ifndef MSCNN_RUN_INFO_H_
#define MSCNN_RUN_INFO_H_

#include "options.h"

namespace mscnn {

int Info(const Options& o);

}  // namespace mscnn

#endif  // MSCNN_RUN_INFO_H_
