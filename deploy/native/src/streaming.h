// mscnn-run --stream: a stream bundle over raw samples (read by raw.h, stepped by
// stream.h).
#ifndef MSCNN_RUN_STREAMING_H_
#define MSCNN_RUN_STREAMING_H_

#include "options.h"

namespace mscnn {

// Raw samples from a file or stdin through a stream bundle: frames, or beats with
// --detect, printed as the stream completes them; memory is bounded (one hop of samples,
// a few seconds of logits) whatever the stream's length. With --detect --json, the beats
// of the whole stream (kept: 8 bytes a beat) as one JSON object at its end, as
// --detect --json prints for a window bundle.
int Stream(const Options& o);

}  // namespace mscnn

#endif  // MSCNN_RUN_STREAMING_H_
