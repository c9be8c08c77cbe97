# The analyser's compiled loop (converter/_measure.c); converter/analysis.py is its one user.
from _typeshed import ReadableBuffer as Buffer

def core_size(channels: int, /) -> int: ...
def init(
    core: bytearray,
    encoding: int,
    channels: int,
    rate: int,
    samples_per_pixel: int,
    stages: int,
    k_weighting: Buffer,
    weights: Buffer,
    first_taps: Buffer,
    later_taps: Buffer,
    reaches: Buffer,
    /,
) -> None: ...
def feed(core: bytearray, samples: Buffer, bends: Buffer, /) -> tuple[bytes, bytes, bytes]: ...
def finish(core: bytearray, bends: Buffer, /) -> tuple[float, float]: ...
def widen_pixels(core: bytearray, carried_min: int, carried_max: int, carried: bool, /) -> None: ...
def pixel_being_built(core: bytearray, /) -> bytes: ...
def counters(core: bytearray, /) -> tuple[int, int]: ...

MOMENTARY_SUBBLOCKS: int
SHORT_TERM_SUBBLOCKS: int
