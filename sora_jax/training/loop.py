"""A training run, top to bottom: checks, data, tokenizer, model, sharded state, restore, loop, evaluation.

Everything that can be wrong with the user's input is checked before the first compile.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from jax.experimental import multihost_utils

from sora_jax import checkpoint, paths, sharding
from sora_jax import config as config_lib
from sora_jax.data.options import DataOptions
from sora_jax.errors import SoraError
from sora_jax.evaluation.evaluator import Evaluator, format_metrics
from sora_jax.model import params as params_lib
from sora_jax.training import executable, flops, oom, pretrained, run_data
from sora_jax.training import state as state_lib
from sora_jax.training import step as step_lib
from sora_jax.training import teacher as teacher_lib
from sora_jax.training.metrics_log import MetricsLog, Progress, format_duration
from sora_jax.training.profiling import StepProfiler
from sora_jax.workdir import Workdir


@dataclasses.dataclass
class RunResult:
    """What a finished (or already finished) run reports back."""

    workdir: epath.Path
    final_step: int
    test_metrics: dict[str, float]
    checkpoint_dir: epath.Path
    resumed_from: int | None = None
    preempted: bool = False


class _StopSignal:
    """Records SIGTERM so the loop can save a checkpoint at the next step boundary and exit cleanly.

    With several processes, jax's preemption service owns SIGTERM instead and agrees on one step for all
    processes (`reached_preemption_sync_point`), since every process must save the same step.
    """

    def __init__(self) -> None:
        self.received = False
        self._previous = None
        self._multi_process = jax.process_count() > 1

    def __enter__(self) -> _StopSignal:
        if self._multi_process:
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: leave signals alone.
            self._previous = None
        return self

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint now and stop (the same answer on every process)."""
        if self._multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _mean_metrics(pending: list[tuple[int, Any]]) -> tuple[dict[str, float], float, int | None]:
    """Average a window of per-step metrics (one device_get); also total tokens and the first bad step."""
    host = jax.device_get([m for _, m in pending])
    for (step, _), metrics in zip(pending, host, strict=True):
        if not all(np.isfinite(metrics[k]) for k in ("loss", "grad_norm", "param_norm")):
            return {}, 0.0, step
    mean = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != "tokens"}
    return mean, float(sum(m["tokens"] for m in host)), None


def _check_batch_sizes(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    dp, processes = sharding.data_parallel_size(mesh), jax.process_count()
    for what, size in (("batch_size / grad_accum_steps", config.batch_size // config.grad_accum_steps),
                       ("config.data.eval_batch_size", config.data.eval_batch_size)):
        if size % dp or size % processes:
            raise SoraError(f"{what} = {size} does not divide over {dp} data-parallel devices and {processes} "
                            f"process(es); use a multiple of {np.lcm(dp, processes)}.")


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, aot_in: str = "") -> RunResult:
    """Train (or resume training) `config` in `workdir` (a local path or a bucket URL), evaluate on the test
    split, return the results. `aot_in`: a train step compiled ahead of time (`--dry_run --topology --aot_out`),
    run instead of compiling when it was made for this config, these devices and these versions."""
    # Input checks first: nothing below is compiled until the config, mesh and workdir agree.
    config_lib.validate(config)
    config = config.copy_and_resolve_references()  # Filled in below; the caller's config stays as it was.
    if config.init_from:
        pretrained.apply_pretrained_architecture(config)
        pretrained.check_source(config.init_from)
    teacher_config = teacher_lib.resolve_teacher(config)  # The student takes the teacher's tokenizer.
    mesh = sharding.mesh_from_config(config.mesh)
    rules = sharding.check_rules(config.mesh.logical_axis_rules)
    _check_batch_sizes(config, mesh)
    tfds.disable_progress_bar()
    work = Workdir(workdir)
    work.create()

    # Data and tokenizer: shared artifacts are made by process 0 while the others wait (see distributed).
    data_dir = work.data_dir(config.data.data_dir)
    paths.check_reachable(data_dir, "config.data.data_dir")
    data = run_data.open_data(config, work, str(data_dir))
    tokenizer = data.tokenizer
    lengths_note = run_data.fill_lengths_from_data(config, data)
    model_config = work.model_config(config, tokenizer.vocab_size)  # Refuses a different model's workdir.
    log = MetricsLog(work)
    log.print(f"workdir {work} | {data.label} | {data.num_examples} training examples | "
              f"mesh {dict(mesh.shape)} | tokenizer {tokenizer.path} ({tokenizer.vocab_size} pieces)")
    if lengths_note:
        log.print(lengths_note)
    data_options = DataOptions.from_config(config.data)  # The lengths are known from here on.
    for line in data.describe(data_options):
        log.print(line)
    train_iter = data.train_batches(config)

    # Model, optimizer, and the sharded train state: restored from the newest checkpoint, else initialized.
    setup = state_lib.build_training_setup(config, model_config, mesh, rules)
    teacher = (teacher_lib.teacher_setup(config.distill, teacher_config, model_config, mesh, rules)
               if teacher_config is not None else None)
    ckpt = checkpoint.Checkpointer(work.checkpoint_dir, keep=config.keep_checkpoints, corrupt_dir=work.corrupt_dir,
                                  use_ocdbt=config.checkpoint_ocdbt)
    restored = ckpt.restore(setup.abstract_state, train_iter)
    for note in ckpt.notes:
        log.print(f"note: {note}")
    if restored is None:
        state = state_lib.init_train_state(setup.init_params, setup.tx, setup.state_shardings, config.seed,
                                           setup.rng_impl, setup.trainable)
        if config.init_from:
            state = state.replace(params=pretrained.train_params(config, model_config, setup, state.params, mesh,
                                                                    rules))
            log.print(f"initialized the parameters from {config.init_from}")
        resumed_from = None
    else:
        state, resumed_from = restored
        log.print(f"resumed from checkpoint step {resumed_from} in {ckpt.directory}")
    log.print(f"model: {params_lib.count(state.params):,} parameters ({model_config.d_model} wide, "
              f"{model_config.num_encoder_layers}+{model_config.num_decoder_layers} layers)")
    if setup.trainable is not None:
        log.print(f"LoRA rank {config.lora.rank}: training {params_lib.count(setup.trainable(state.params)[0]):,} "
                  f"parameters; checkpoints hold the whole tree (frozen base included)")
    if config.quantization.qat:
        log.print(f"quantization-aware training: {config.quantization.qat} weights in the forward pass; the saved "
                  "params stay float (serve them with --quantize)")
    result = RunResult(work.path, int(jax.device_get(state.step)), {}, ckpt.directory, resumed_from)
    storage_lost = False
    try:
        if result.final_step >= config.num_train_steps:
            result.test_metrics = work.last_metrics("test")
            log.print(f"this run already finished at step {result.final_step} (num_train_steps="
                      f"{config.num_train_steps}); checkpoints are in {ckpt.directory}. Use a new --workdir "
                      "to train again.")
            return result
        if teacher is not None:  # Restored outside the mesh context (as eval and predict restore a run).
            teacher_params = teacher_lib.load_teacher_params(teacher)
            log.print(f"distilling from {teacher.spec} ({params_lib.count(teacher_params):,} parameters, "
                      f"temperature {teacher.temperature}, alpha {teacher.alpha})")
        with sharding.activate(mesh, rules):
            evaluator = data.evaluator(setup.model, data_options, mesh, setup.state_shardings.params)
            train_step = step_lib.compile_train_step(setup, step_lib.StepOptions.from_config(config), mesh, teacher)
            if aot_in:
                train_step = executable.load(aot_in, executable.Manifest.for_run(config, mesh), mesh)
                log.print(f"train step: the executable compiled ahead of time in {aot_in} (not compiled here)")
            # The first call compiles (or allocates): an out-of-memory there is one line, as in --dry_run.
            train_step = oom.one_line_oom(train_step, "the train step", jax.devices()[0].device_kind)
            if teacher is not None:
                train_step = _with_teacher(train_step, teacher_params)
            step_flops = flops.train_step_flops(model_config, config.batch_size, config.data.max_input_length,
                                                config.data.max_target_length, config.grad_accum_steps).total
            with paths.storage_errors(f"training in {work}"):
                _train_loop(config, state, train_step, train_iter, ckpt, evaluator, log, result, work,
                            flops_per_step=step_flops)
        return result
    except paths.StorageUnreachable:
        storage_lost = True
        raise
    finally:
        # Waiting for writes still in flight to a storage that is gone would hang for many minutes (orbax waits
        # for its commit threads, tensorstore retries): the error is reported without them.
        if not storage_lost:
            try:
                ckpt.close()
                log.close()
            finally:
                if jax.process_count() > 1:
                    # Leave together: jax's shutdown barrier fails a process that waits too long for the others.
                    multihost_utils.sync_global_devices("sora_run_end")


def _with_teacher(compiled: Any, teacher_params: Any) -> Any:
    """The compiled distillation step as a function of (state, batch), the teacher's params bound."""

    def train_step(state: Any, batch: Any) -> Any:
        return compiled(state, batch, teacher_params)

    return train_step


def log_eval(evaluator: Evaluator, log: MetricsLog, step: int, params: Any, split: str, *, max_examples: int = 0,
             num_samples: int = 3) -> dict[str, float]:
    """Evaluate, write the metrics event, print a summary line and a few sample predictions."""
    metrics, predictions = evaluator.evaluate(params, split, max_examples=max_examples)
    log.write(step, split, metrics)
    log.print(f"eval {split} @ step {step}: {format_metrics(metrics)}")
    samples = predictions[:num_samples]
    if samples:
        lines = [f"  input: {p['input'][:120]}\n  target: {p['target']}\n  prediction: {p['prediction']}"
                 for p in samples]
        log.text(step, f"{split}/samples", "\n".join(lines))
    return metrics


def _train_loop(config: ml_collections.ConfigDict, state: Any, train_step: Any, train_iter: Any,
                ckpt: checkpoint.Checkpointer, evaluator: Evaluator, log: MetricsLog, result: RunResult,
                work: Workdir, *, flops_per_step: float | None = None) -> None:
    """Steps from `result.final_step` to the end; fills in `result` (final step, test metrics, preempted)."""
    total, step = config.num_train_steps, result.final_step
    progress = Progress(total, step, flops_per_step=flops_per_step, num_devices=jax.device_count(),
                        device_kind=jax.devices()[0].device_kind)
    pending: list[tuple[int, Any]] = []  # Device-side metrics since the last log: fetched together.
    last_saved = ckpt.latest_step()
    started = time.perf_counter()
    best = (checkpoint.BestCheckpoint(work.best_dir, config.best_metric, use_ocdbt=config.checkpoint_ocdbt)
            if config.best_metric else None)

    def flush_metrics() -> None:
        # Pull the window's metrics to the host; a non-finite value stops the run before anything is saved.
        nonlocal pending
        if not pending:
            return
        mean, tokens, bad_step = _mean_metrics(pending)
        pending = []
        if bad_step is not None:
            kept = f"the last good checkpoint (step {last_saved}) is kept" if last_saved else "no checkpoint was saved"
            raise SoraError(f"the training loss, gradients or parameters became NaN or infinite at step "
                            f"{bad_step}; {kept}. Lower config.optimizer.learning_rate, raise warmup_steps, or enable "
                            "gradient clipping.")
        line, rates = progress.line(step, mean, tokens)
        log.print(line)
        log.write(step, "train", {**mean, **rates})

    profiler = StepProfiler(config_lib.parse_profile_steps(config.profile_steps), work.profile_dir)
    with _StopSignal() as stop, profiler:
        while step < total:
            profiler.before_step(step)
            batch = sharding.global_batch(next(train_iter), evaluator.mesh)
            state, metrics = train_step(state, batch)
            step += 1
            profiler.after_step(step, metrics)
            pending.append((step, metrics))
            last = step == total
            stopping = stop.should_stop(step)
            if step % config.log_every_steps == 0 or last:
                flush_metrics()
            if step % config.eval_every_steps == 0 or last:
                flush_metrics()
                eval_start = time.perf_counter()
                eval_metrics = log_eval(evaluator, log, step, state.params, "validation",
                                        max_examples=config.data.max_eval_examples,
                                        num_samples=config.data.num_sample_predictions)
                if best is not None and best.update(step, state.params, eval_metrics):
                    log.print(f"best {best.metric} so far ({best.value:.4f}): params saved in {best.directory}")
                progress.exclude_pause(time.perf_counter() - eval_start)
            if step % config.checkpoint_every_steps == 0 or last or stopping:
                flush_metrics()
                ckpt.save(step, state, train_iter)
                last_saved = step
            if stopping:
                log.print(f"SIGTERM: saved checkpoint step {step} in {ckpt.directory}; run the same command "
                          "again to resume.")
                result.final_step, result.preempted = step, True
                return

    result.final_step = step
    # Pretraining corpora have no test split: the final evaluation is then on validation.
    final_split = "test" if "test" in evaluator.splits else "validation"
    result.test_metrics = log_eval(evaluator, log, step, state.params, final_split,
                                   max_examples=config.data.max_test_examples,
                                   num_samples=config.data.num_sample_predictions)
    log.print(f"done: {step} steps in {format_duration(time.perf_counter() - started)}. {final_split}: "
              f"{format_metrics(result.test_metrics).replace(' |', ',')}")
    log.print(f"checkpoints: {ckpt.directory} (step {step}); metrics: {work.metrics_file}; "
              f"TensorBoard: tensorboard --logdir {work.tensorboard_dir}")
