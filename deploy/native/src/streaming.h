// mscnn-run --stream: a stream bundle over raw samples (the step's driver is stream.h).
#ifndef MSCNN_RUN_STREAMING_H_
#define MSCNN_RUN_STREAMING_H_

#include "options.h"

namespace mscnn {

// Raw samples from a file or stdin through a stream bundle: frames, or beats with
// --detect, printed as the stream completes them; memory is bounded (one hop of samples,
// a few seconds of logits) whatever the stream's length.
int Stream(const Options& o);

}  // namespace mscnn

#endif  // MSCNN_RUN_STREAMING_H_
