// mscnn-run --check: every golden input of a bundle through its model, compared with its
// golden output by deploy/parity.py's rule (and, for a detector, by its beats); and
// --tolerances, the table that rule uses.
#ifndef MSCNN_RUN_CHECK_H_
#define MSCNN_RUN_CHECK_H_

#include "options.h"

namespace mscnn {

// Exit 0 if every golden output matched (and every record gave PyTorch's beats), else 1.
int Check(const Options& o);
int Tolerances(const Options& o);

}  // namespace mscnn

#endif  // MSCNN_RUN_CHECK_H_
