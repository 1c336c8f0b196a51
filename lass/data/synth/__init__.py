"""The Slakh-style synthetic drums+bass data set.

:mod:`~lass.data.synth.compose` writes procedural MIDI (drum grooves in a dozen styles with
fills and crashes, bass lines that follow chord progressions), :mod:`~lass.data.synth.render`
renders each stem with the FluidSynth CLI and a General MIDI soundfont, and
:mod:`~lass.data.synth.build` turns that into a stem-folder data set with splits.
"""

from lass.data.synth.build import SynthConfig, make_synth_dataset
from lass.data.synth.compose import DRUM_STYLES, Song, compose_song

__all__ = ["DRUM_STYLES", "Song", "SynthConfig", "compose_song", "make_synth_dataset"]
