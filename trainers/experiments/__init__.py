"""`python -m trainers.experiments`: the papers' claims at small scale, from a pretrained base on CPU.

Experiments (each also alone with --only NAME; results accumulate in OUTPUT/results.json):
  methods     sft, gift, blockwise, lift3, lift2 fine-tuned from one pretrained masked-diffusion base
              (`setting.py`: pretrained on a synthetic mixture without the tasks' formats) under one
              budget, several seeds, read at 3 budgets: learning curves with 95% t-intervals, and the
              smallest difference the design detects (`methods.py`).
  block_size  Blockwise SFT with block sizes {8, 16, 32} x decoding block lengths {8, 16, 32}, every
              seed, beside SFT decoded the same ways (`blocks.py`).
  gap         masked diffusion against a causal model on the same rows: training length, tokens per
              step, remasking, one block (`gap.py`).
  l2d_steps   L2D on an imperfect main model: accuracy against ODE evaluations per token, against an
              AR fine-tune of equal budget (`l2d.py`).
  rl          diffu-GRPO from the SFT and GIFT fine-tunes: GIFT's cold-start claim (`rl.py`).
  cost        wall time per training step and per evaluated item, as ratios to SFT (`cost.py`).

Responses carry a short worked trace before the answer (Sudoku: the grid with only the cells it
fills; Countdown: the intermediate results of the expression), so a response spans two 32-token
blocks. Every method shares one hyper-parameter setting (`setting.FULL`); seeds are fixed. Before
the run, the design's power: with 6 seeds per point, two methods are told apart when their means
differ by about 1.8 seed standard deviations (3 seeds: 3; Student's t-test at 5%, power 80%; the
report states the figure from the seeds' observed spread, and compares with that test). A killed run re-run with the same command keeps finished stages
and evaluations and resumes an interrupted stage from its last checkpoint. Writes results.json,
report.md and *.png under --output (`report.py`, `findings.py`, `plots.py`). --quick: tiny budgets,
used by the test suite.
"""
