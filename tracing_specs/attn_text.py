"""Attention-output restorations in the text decoder."""

from lalm_interp.specs import Corrupt, Experiment, Restore

# the paper's corruption: 3σ Gaussian noise on the subject's frames at the encoder's conv2
CORRUPT = Corrupt(at="audio.conv2", span="subject", noise="gaussian", scale=3.0, seed=0)
AUDIO_SPANS = ("first_subject_word", "last_subject_word", "last_word")
TEXT_SPANS = AUDIO_SPANS + ("last_token",)
WINDOW = 10  # layers around each centre; clipped to a shorter stack (ROME), or cap: `trace run --max-window N`

EXPERIMENT = Experiment(
    name="attn_text",
    corrupt=CORRUPT,
    restores=(
        Restore(at="text.layers.*.attn", window=WINDOW, positions=TEXT_SPANS),
    ),
)
