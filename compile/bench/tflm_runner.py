"""The detector through TensorFlow Lite for Microcontrollers, for a side-by-side.

Run by compile/bench/tflm.py with the interpreter of its own virtual environment (`make tflm`
makes `.venv-tflm`: tensorflow-cpu and tflite-micro, pinned), which has no torch, TVM or
mscnn: this file imports numpy, tensorflow and tflite_micro only, and is run as a script.

    python compile/bench/tflm_runner.py SPEC.npz RESULT.npz MODEL.tflite

SPEC.npz (written by compile/bench/tflm.py): `spec`, a JSON description of the network (the
branches' convs with their folded weights, the block-level affine after the last ReLU,
the pools, the per-frame head), its arrays by name, the calibration records, the
held-out records and PyTorch's fp32 outputs on them. This script

1. builds the same network in Keras (channels last) and checks it against PyTorch's
   outputs (a wrong mapping stops here, not as a poor score later);
2. converts it with TensorFlow Lite's post-training full-integer quantization, the
   calibration records as its representative dataset (what a TFLM user gets by default:
   min/max calibration), float input and output, the ops TFLM has no int8 kernel for
   (`spec["float_ops"]`) left in float;
3. finds the smallest arena TFLM's interpreter accepts (bisection: the RAM it needs), and
   runs the held-out records through TFLM's reference kernels on this host.

RESULT.npz: the held-out outputs, the flatbuffer's bytes and the arena's.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ARENA_STEP = 1024  # bisection resolution of the arena size
MAX_ARENA = 1 << 29  # 512 MB: a model that cannot be prepared in this never will
KERAS_TOLERANCE = 1e-4  # of the largest output: the Keras network is the PyTorch one


def bounded_mish(x):
    """Mish, x tanh(softplus(x)), with softplus as relu(x) + log(1 + exp(-|x|)): equal in
    float, and every intermediate bounded (exp in (0, 1], log in (0, ln 2]), so each keeps
    its precision when quantized to int8. Keras's own Mish takes log(exp(x) + 1), whose
    int8 EXP output must span exp(largest input) (10^26 on the detector's calibration):
    every ordinary value rounds to 0, Mish to a constant, and so does the output."""
    from keras import ops

    return x * ops.tanh(ops.relu(x) + ops.log(1.0 + ops.exp(-ops.abs(x))))


def build_keras(spec: dict, arrays, int8_mish: bool = False):
    """The network of `spec` in Keras, input (1, samples, leads), output (1, frames, C);
    with `int8_mish`, Mish as `bounded_mish` (for full-integer quantization)."""
    import keras
    from keras import layers

    x = keras.Input((spec["samples"], spec["leads"]), batch_size=1)
    ends = []
    for branch in spec["branches"]:
        h = x
        for block in branch:
            for conv in block["convs"]:
                w = arrays[conv["weight"]]  # (out, in, k), folded
                layer = layers.Conv1D(
                    w.shape[0], w.shape[2], dilation_rate=conv["dilation"], padding="same",
                    activation="relu",
                )  # fmt: skip
                h = layer(h)
                layer.set_weights([w.transpose(2, 1, 0), arrays[conv["bias"]]])
            if block["post"] is not None:  # the block's BatchNorm after the ReLU: an affine
                scale, shift = (arrays[k] for k in block["post"])
                affine = layers.BatchNormalization(epsilon=0.0)
                h = affine(h)
                affine.set_weights([scale, shift, np.zeros_like(scale), np.ones_like(scale)])
            h = layers.MaxPool1D(block["pool"])(h)
        ends.append(h)
    h = layers.Concatenate()(ends) if len(ends) > 1 else ends[0]
    for dense in spec["head"]:
        w = arrays[dense["weight"]]  # (out, in)
        activation = dense["activation"]
        if int8_mish and activation == "mish":
            activation = bounded_mish
        layer = layers.Dense(w.shape[0], activation=activation)
        h = layer(h)
        layer.set_weights([w.T, arrays[dense["bias"]]])
    return keras.Model(x, h)


def to_int8(model, spec: dict, calibration: np.ndarray) -> bytes:
    """TensorFlow Lite's full-integer post-training quantization of `model`."""
    import tensorflow as tf

    def representative():
        for record in calibration:
            yield [record.T[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.inference_input_type = tf.float32
    converter.inference_output_type = tf.float32
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=spec["float_ops"])
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative, debug_options=options
    )
    return bytes(debugger.get_nondebug_quantized_model())


def smallest_arena(flatbuffer: bytes) -> int:
    """The fewest bytes of arena TFLM's interpreter allocates the model in."""
    from tflite_micro.python.tflite_micro import runtime

    def fits(size: int) -> bool:
        try:
            runtime.Interpreter.from_bytes(flatbuffer, arena_size=size)
        except RuntimeError:
            return False
        return True

    lo, hi = 0, MAX_ARENA
    if not fits(hi):
        raise SystemExit(
            "error: TFLM cannot prepare the model with any arena: one of its ops has no "
            "TFLM kernel for its types (its log names the node)"
        )
    while hi - lo > ARENA_STEP:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def run_tflm(flatbuffer: bytes, arena: int, records: np.ndarray) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(flatbuffer, arena_size=arena)
    outputs = []
    for record in records:
        interpreter.set_input(record.T[None].astype(np.float32), 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0)[0])
    return np.stack(outputs)


def main(argv: list[str]) -> int:
    spec_path, result_path, model_path = argv
    data = np.load(spec_path)
    spec = json.loads(str(data["spec"]))
    model = build_keras(spec, data)
    expected = data["expected"]
    first = np.stack([model(r.T[None]).numpy()[0] for r in data["held_out"][:2]])
    error = float(np.abs(first - expected[:2]).max() / np.abs(expected[:2]).max())
    if not error <= KERAS_TOLERANCE:
        print(f"error: the Keras network differs from PyTorch's by {error:.2e}", file=sys.stderr)
        return 3
    flatbuffer = to_int8(model, spec, data["calibration"])
    with open(model_path, "wb") as f:
        f.write(flatbuffer)
    arena = smallest_arena(flatbuffer)
    outputs = run_tflm(flatbuffer, arena, data["held_out"])
    np.savez(
        result_path,
        outputs=outputs,
        flatbuffer_bytes=len(flatbuffer),
        arena_bytes=arena,
        keras_error=error,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
