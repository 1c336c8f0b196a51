"""The Slakh-style synthetic data sets.

:mod:`~lass.data.synth.compose` writes procedural MIDI (drum grooves in a dozen styles with
fills and crashes, bass lines that follow chord progressions), :mod:`~lass.data.synth.render`
renders each stem with the FluidSynth CLI and a General MIDI soundfont, and
:mod:`~lass.data.synth.build` turns that into the drums+bass stem-folder data set with splits.

The band set adds an ``other`` stem (:mod:`~lass.data.synth.band`), draws each stem's timbre
from several Debian soundfonts (:mod:`~lass.data.synth.soundfonts`), augments each stem
(:mod:`~lass.data.synth.effects`) and renders test songs again with held-out soundfonts
(:mod:`~lass.data.synth.band_build`).
"""

from lass.data.synth.band import BAND_STYLES, BandSong, compose_band_song
from lass.data.synth.band_build import BandConfig, make_band_dataset
from lass.data.synth.build import SynthConfig, make_synth_dataset
from lass.data.synth.compose import DRUM_STYLES, Song, compose_song

__all__ = ["BAND_STYLES", "DRUM_STYLES", "BandConfig", "BandSong", "Song", "SynthConfig",
           "compose_band_song", "compose_song", "make_band_dataset", "make_synth_dataset"]
