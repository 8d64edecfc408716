// mscnn-run on a window bundle: one input .npy through the model, to an output .npy
// (--input --output), or for a detector to its beats and heart rate (--input --detect).
#ifndef MSCNN_RUN_WINDOW_H_
#define MSCNN_RUN_WINDOW_H_

#include "options.h"

namespace mscnn {

// One input through the model to an output file, written whole or not at all.
int RunOne(const Options& o);
// One record through a window detector bundle, then the manifest's R-peak rule.
int Detect(const Options& o);

}  // namespace mscnn

#endif  // MSCNN_RUN_WINDOW_H_
