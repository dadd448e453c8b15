"""Single-example heatmaps: restore hidden states at every frame (audio) and every token (text),
one layer at a time (window 1, as ROME's hidden-state heatmaps)."""

from lalm_interp.specs import Corrupt, Experiment, Restore

# the paper's corruption: 3σ Gaussian noise on the subject's frames at the encoder's conv2
CORRUPT = Corrupt(at="audio.conv2", span="subject", noise="gaussian", scale=3.0, seed=0)

EXPERIMENT = Experiment(
    name="heatmap",
    corrupt=CORRUPT,
    restores=(
        Restore(at="audio.layers.*.resid", window=1, positions="each"),
        Restore(at="text.layers.*.resid", window=1, positions="each"),
    ),
)
