"""A whole PTQ run on a trained FP workdir: every setting x method, a table, a plot, the files."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.data.contract import InputContract
from jaxquant.errors import ConfigError
from jaxquant.methods import bitsplit
from jaxquant.ptq.calibration import CalibrationData, sample_rows
from jaxquant.ptq.capture import Network, Quantizer, act_arrays, find_layers
from jaxquant.ptq.config import METHOD_LABELS, validate_config
from jaxquant.ptq.fit import quantize_model, reconstructs, weight_placement
from jaxquant.ptq.io import save_quantized
from jaxquant.ptq.report import batches_accuracy, format_ptq_table, plot_ptq
from jaxquant.quantizers import FP_BITS


def fp_network(workdir: str | pathlib.Path, dataset=None):
    """``(run config, dataset, Network, variables)`` of a trained run's full-precision model
    (its bit-width 32; train one with ``--config.bits=(32,)``)."""
    from jaxquant.runs import load_run

    run_config, dataset, trainer, state, _ = load_run(workdir, dataset)
    bits = tuple(int(b) for b in run_config.bits)
    if FP_BITS not in bits:
        raise ConfigError(
            f"{workdir} has no full-precision model (bits {bits}); PTQ starts from an FP run: "
            'jaxquant train --config.method=lsq --config.bits="(32,)" ...'
        )
    network = Network.from_model(trainer.model, bits.index(FP_BITS), trainer.preprocess)
    return run_config, dataset, network, {"params": state.params, "batch_stats": state.batch_stats}


def warm_up(
    quantizer: Quantizer,
    variables: dict,
    data: CalibrationData,
    rows: dict,
    samples: dict,
    settings: Iterable[tuple[int, int]],
    config,
) -> float:
    """Compile, before anything is timed, every function the methods will call: the capture and
    BN forwards and, per layer and weight bit-width, `fwa`, `ofwa` and `ofwa_rr`. Returns
    seconds."""
    start = time.perf_counter()
    layers = quantizer.layers
    no_act = act_arrays(layers, {})
    jax.block_until_ready(quantizer.bn_update(variables, data.calibration[:2], no_act))
    if data.bn_stack is not None:
        quantizer.compile_bn_scan(variables, data.bn_stack, no_act)
    if "bitsplit_ecaq" in config.methods:
        jax.block_until_ready(
            quantizer.capture(variables, data.calibration, no_act, rows, samples, train=True)
        )
    if any(m != "rtn" for m in config.methods):  # every BitSplit method compiles the same functions
        for weight_bits, _ in settings:
            placement = weight_placement(layers, weight_bits, config)
            for layer in layers:
                bits = placement[layer.name]
                zeros = jnp.zeros((layer.features, layer.fan_in), jnp.float32)
                codes, alpha = bitsplit.fwa(zeros, bits)
                bitsplit.ofwa(zeros, bitsplit.split(codes, bits), alpha, epochs=config.ofwa_epochs)
                if reconstructs(layer, layers, "bitsplit", config) and layer.depthwise:
                    bitsplit.compiled_ofwa_rr_dw(
                        bits - 1, layer.features, layer.fan_in, config.epochs
                    )
                elif reconstructs(layer, layers, "bitsplit", config):
                    bitsplit.compiled_ofwa_rr(
                        bits - 1, layer.features, layer.fan_in, config.epochs, config.block
                    )
    return time.perf_counter() - start


def run(
    workdir: str | pathlib.Path,
    config,
    out: str | pathlib.Path | None = None,
    dataset=None,
    progress: bool = True,
    save_models: bool = True,
) -> dict:
    """PTQ of the FP model in ``workdir`` for every ``config.settings`` x ``config.methods``:
    prints one line per result, writes the quantized models, ``ptq_results.json``,
    ``ptq_table.md`` and ``ptq_accuracy.png`` to ``out`` (default ``workdir/ptq``), and returns
    ``{'accuracy': {method: {setting: acc}}, 'seconds': {...}, ...}``."""
    settings = [str(s).upper() for s in config.settings]
    parsed = dict(zip(settings, validate_config(config)))
    run_config, dataset, network, variables = fp_network(workdir, dataset)
    out = pathlib.Path(out or pathlib.Path(workdir) / "ptq")
    out.mkdir(parents=True, exist_ok=True)
    data = CalibrationData.from_dataset(network, dataset, config, config.seed)
    layers = find_layers(network, variables, data.calibration[:2])
    quantizer = Quantizer(network, layers)
    rows, samples = sample_rows(
        np.random.default_rng(config.seed),
        layers,
        int(data.calibration.shape[0]),
        config.calibration_rows,
        config.activation_samples,
    )
    print(
        f"jaxquant ptq: {workdir} ({run_config.model} on {dataset.name}), {len(layers)} layers, "
        f"{int(data.calibration.shape[0])} calibration images, "
        f"{config.calibration_rows} rows per layer; "
        f"writing to {out}",
        flush=True,
    )
    fp_rows = quantizer.capture(
        variables, data.calibration, act_arrays(layers, {}), rows, samples, train=False
    )
    compile_seconds = warm_up(quantizer, variables, data, rows, samples, parsed.values(), config)
    print(
        f"  compiled the forwards and {bitsplit.compiled_count()} ofwa_rr layer shapes "
        f"in {compile_seconds:.1f} s "
        "(kept out of the calibration times)",
        flush=True,
    )

    def test_accuracy(variables, act):
        return batches_accuracy(
            quantizer, variables, act, dataset.test_batches(config.eval_batch_size)
        )

    fp_accuracy = test_accuracy(variables, {})
    table = {"fp": {s: fp_accuracy for s in settings}}
    seconds: dict[str, dict[str, float]] = {}
    reconstruction: dict[str, dict[str, dict]] = {}
    print(f"  FP: {100 * fp_accuracy:.2f}%", flush=True)
    for setting in settings:
        weight_bits, act_bits = parsed[setting]
        for method in config.methods:
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(layers), desc=f"{setting} {method}", leave=False, unit="layer")
            model = quantize_model(
                quantizer,
                variables,
                data,
                fp_rows,
                method,
                weight_bits,
                act_bits,
                config,
                rows,
                samples,
                progress=(lambda _: bar.update()) if bar else None,
            )
            if bar:
                bar.close()
            acc = test_accuracy(model.variables, model.activations)
            table.setdefault(method, {})[setting] = acc
            seconds.setdefault(method, {})[setting] = round(model.seconds, 1)
            if model.reconstruction:
                reconstruction.setdefault(method, {})[setting] = {
                    k: list(v) for k, v in model.reconstruction.items()
                }
            print(
                f"  {setting} {METHOD_LABELS[method]}: {100 * acc:.2f}% "
                f"(calibration {model.seconds:.1f} s)",
                flush=True,
            )
            if save_models:
                save_quantized(
                    model,
                    out / f"{method}_{setting}.msgpack",
                    {
                        "test_accuracy": acc,
                        "fp_run": str(workdir),
                        "input_contract": InputContract.for_dataset(dataset).to_json(),
                    },
                )
    title = (
        f"{dataset.name}: test accuracy (%) after PTQ of {run_config.model} "
        f"({dataset.test_size} test images)"
    )
    text = (
        format_ptq_table(table, settings, title)
        + "\n\n"
        + format_ptq_table(
            {m: v for m, v in seconds.items()}, settings, "calibration seconds", 1, 1.0
        )
    )
    print("\n" + text)
    (out / "ptq_table.md").write_text(text + "\n")
    payload = {
        "fp_run": str(workdir),
        "model": run_config.model,
        "dataset": dataset.name,
        "test_examples": int(dataset.test_size),
        "settings": settings,
        "accuracy": table,
        "seconds": seconds,
        "compile_seconds": round(compile_seconds, 1),
        "reconstruction_error": reconstruction,
        "config": config.to_dict(),
    }
    (out / "ptq_results.json").write_text(json.dumps(payload, indent=2) + "\n")
    png = plot_ptq(
        table, settings, out / "ptq_accuracy.png", title=f"{dataset.name}, {run_config.model}: PTQ"
    )
    print(f"\nsaved {out / 'ptq_results.json'}, {out / 'ptq_table.md'} and {png}")
    return payload
