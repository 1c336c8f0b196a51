"""The soundfonts the synthetic data sets draw their timbres from.

Each entry names a soundfont that a Debian package installs, the package, and what it can
play: melodic General MIDI programs, drum kits on the MIDI drum channel (GM bank 128 kit
presets), or a single drum kit laid out on the GM percussion keys as an ordinary preset
(the AVL drum kits, which are multi-sampled acoustic kits).

Reserved for evaluation and refused everywhere here: every MuseScore General soundfont and
TimGM6mb. A path is checked after resolving links, since Debian's ``default-GM`` links can
point at a reserved file. FluidR3 GS is not listed: its 3 MB file holds only the GS sound
effect variations (bank 1-8 programs 120-127 and an SFX kit), no instrument a song uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lass.errors import DataError

#: Lower-case file name stems of the soundfonts reserved for evaluation.
RESERVED_PREFIXES: tuple[str, ...] = ("musescore_general", "musescore-general", "timgm6mb")


@dataclass(frozen=True)
class Soundfont:
    """A soundfont the renderer can draw from.

    Attributes:
        name: short name used in configurations and track metadata.
        paths: where Debian puts the file (the first that exists is used).
        package: the Debian package that installs it.
        melodic: whether it has the 128 GM melodic programs on bank 0.
        kits: GM drum-kit presets (bank 128 program numbers) it offers on the drum channel.
        kit_as_preset: it is one drum kit on bank 0 program 0, played on an ordinary channel.
    """

    name: str
    paths: tuple[str, ...]
    package: str
    melodic: bool
    kits: tuple[int, ...] = ()
    kit_as_preset: bool = False

    @property
    def drums(self) -> bool:
        """Whether it can play a drum part."""
        return bool(self.kits) or self.kit_as_preset

    def path(self) -> Path:
        """The installed file; :class:`DataError` names the package to install otherwise."""
        for p in self.paths:
            if Path(p).is_file():
                path = Path(p)
                check_not_reserved(path)
                return path
        raise DataError(f"soundfont {self.name!r} not found ({', '.join(self.paths)}); "
                        f"install Debian's {self.package}")

    def available(self) -> bool:
        """Whether the file is installed."""
        return any(Path(p).is_file() for p in self.paths)


_FLUID_KITS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 24, 25,
               32, 33, 34, 35, 36, 40, 41, 42)
SOUNDFONTS: dict[str, Soundfont] = {s.name: s for s in [
    Soundfont("fluidr3", ("/usr/share/sounds/sf2/FluidR3_GM.sf2",
                          "/usr/share/soundfonts/FluidR3_GM.sf2"),
              "fluid-soundfont-gm", melodic=True, kits=_FLUID_KITS),
    Soundfont("fluidr3mono", ("/usr/share/sounds/sf3/FluidR3Mono_GM.sf3",
                              "/usr/share/fluidr3mono-gm-soundfont/FluidR3Mono_GM.sf3"),
              "fluidr3mono-gm-soundfont", melodic=True, kits=_FLUID_KITS),
    Soundfont("csound", ("/usr/share/sounds/sf2/sf_GMbank.sf2", "/usr/share/samples/sf_GMbank.sf2"),
              "csound-soundfont", melodic=True, kits=(0, 8, 16, 24, 25, 32, 40)),
    Soundfont("opl3", ("/usr/share/sounds/sf2/OPL-3_FM_128M.sf2",), "opl3-soundfont",
              melodic=True, kits=(0,)),
    Soundfont("avl-black-pearl", ("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2",
                                  "/usr/lib/lv2/avldrums.lv2/Black_Pearl_4_LV2.sf2"),
              "avldrums.lv2-soundfont", melodic=False, kit_as_preset=True),
    Soundfont("avl-red-zeppelin", ("/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2",
                                   "/usr/lib/lv2/avldrums.lv2/Red_Zeppelin_4_LV2.sf2"),
              "avldrums.lv2-soundfont", melodic=False, kit_as_preset=True),
]}
#: The Debian packages that install every listed soundfont.
SOUNDFONT_PACKAGES: tuple[str, ...] = tuple(dict.fromkeys(s.package for s in SOUNDFONTS.values()))


def check_not_reserved(path: str | os.PathLike[str]) -> None:
    """Refuse a soundfont reserved for evaluation (MuseScore General, TimGM6mb), links resolved."""
    for p in (Path(path), Path(path).resolve()):
        if p.name.lower().startswith(RESERVED_PREFIXES):
            raise DataError(f"{path} is a soundfont reserved for evaluation ({p.name}); "
                            "it is never used to make training or tuning data")


def soundfonts(names: Sequence[str]) -> list[Soundfont]:
    """The named soundfonts; an unknown name raises :class:`DataError` listing the known ones."""
    out = []
    for n in names:
        if n not in SOUNDFONTS:
            raise DataError(f"unknown soundfont {n!r}; known: {', '.join(SOUNDFONTS)}")
        out.append(SOUNDFONTS[n])
    return out
