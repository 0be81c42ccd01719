"""Ready group maps: coarse, everyday groups of a checkpoint's classes, by class id.

A group map names groups and lists each group's classes as inclusive class-id ranges.
Groups are disjoint, so a group's score (the sum of its classes' probabilities) is a
probability too. ``labels.groups`` selects a map by name; ``docs/labels.md`` lists the
classes of every group, and ``tests/test_labels.py`` checks that list against this file
and the ImageNet-1k class names.

Every range below was checked against the ImageNet-1k class order (the synset list of
timm's ``imagenet_synsets.txt`` and WordNet's lemmas and definitions), which is the
order of ``id2label`` in ImageNet-1k checkpoints on the Hugging Face hub.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from labelcast.errors import ConfigError

log = logging.getLogger(__name__)

# The names ``labels.groups`` accepts: the keys of GROUP_MAPS.
GroupMapName = Literal["imagenet-coarse"]
Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class GroupMap:
    """A named set of disjoint groups of class ids for checkpoints with ``num_classes`` classes.

    ``anchors`` are a few class ids with the first word of their usual name, used to
    warn when a checkpoint has the right number of classes but a different class order.
    """

    name: str
    num_classes: int
    groups: dict[str, Ranges]
    anchors: dict[int, str]

    def class_groups(self) -> dict[int, str]:
        """Return the group of each grouped class id (ungrouped ids are absent)."""
        result: dict[int, str] = {}
        for group, ranges in self.groups.items():
            for first, last in ranges:
                for class_id in range(first, last + 1):
                    result[class_id] = group
        return result


def _ids(*items: int | tuple[int, int]) -> Ranges:
    """Ranges from single ids and inclusive ``(first, last)`` pairs."""
    return tuple(item if isinstance(item, tuple) else (item, item) for item in items)


# Everyday groups of the 1000 ImageNet-1k classes. Classes in no group keep their own
# name (see ``labels.ungrouped``). Notes on borderline classes:
# - 51 triceratops is left out of ``reptile`` (its pictures are mostly toys and models).
# - 276 hyena is not a canid and belongs to no group; 273-275 are wild dogs.
# - 388 giant panda is a bear; 387 lesser (red) panda is not and belongs to no group.
# - 923 ``plate`` and 968 ``cup`` are WordNet's food and drink senses ("a main course
#   served on a plate", "a punch served in a pitcher"), not tableware.
# - vehicle parts (car wheel, grille, car mirror), sleds and the mobile home are not vehicles.
IMAGENET_COARSE = GroupMap(
    name="imagenet-coarse",
    num_classes=1000,
    groups={
        # -- animals --
        "fish": _ids((0, 6), (389, 397)),
        "bird": _ids((7, 24), (80, 100), (127, 146)),
        "amphibian": _ids((25, 32)),
        "reptile": _ids((33, 50), (52, 68)),
        "spider": _ids((72, 77)),
        "elephant": _ids(101, (385, 386)),
        "mollusc": _ids((112, 117)),
        "crustacean": _ids((118, 126)),
        "marine mammal": _ids((147, 150)),
        "dog": _ids((151, 268)),
        "wolf": _ids((269, 272)),
        "wild dog": _ids((273, 275)),
        "fox": _ids((277, 280)),
        "cat": _ids((281, 285)),
        "wild cat": _ids((286, 293)),
        "bear": _ids((294, 297), 388),
        "insect": _ids((300, 326)),
        "rabbit": _ids((330, 332)),
        "rodent": _ids((333, 338)),
        "horse": _ids(339),
        "pig": _ids((341, 343)),
        "cattle": _ids((345, 347)),
        "sheep": _ids((348, 349)),
        "antelope": _ids((351, 353)),
        "camel": _ids((354, 355)),
        "primate": _ids((365, 384)),
        # -- vehicles --
        "vehicle": _ids(
            407,  # ambulance
            408,  # amphibious vehicle
            436,  # station wagon
            444,  # tandem bicycle
            466,  # bullet train
            468,  # taxi
            511,  # convertible
            547,  # electric locomotive
            555,  # fire engine
            561,  # forklift
            565,  # freight car
            569,  # garbage truck
            573,  # go-kart
            575,  # golf cart
            586,  # half track
            595,  # harvester
            603,  # horse cart
            609,  # jeep
            612,  # rickshaw
            627,  # limousine
            654,  # minibus
            656,  # minivan
            661,  # Model T
            665,  # moped
            (670, 671),  # motor scooter, mountain bike
            675,  # moving van
            690,  # oxcart
            705,  # passenger (railway) car
            717,  # pickup truck
            734,  # police van
            751,  # race car
            757,  # recreational vehicle
            779,  # school bus
            (802, 803),  # snowmobile, snowplow
            817,  # sports car
            820,  # steam locomotive
            829,  # streetcar
            847,  # tank
            864,  # tow truck
            (866, 867),  # tractor, trailer truck
            870,  # tricycle
            874,  # trolleybus
            880,  # unicycle
        ),
        "boat": _ids(
            403,  # aircraft carrier
            472,  # canoe
            484,  # catamaran
            510,  # container ship
            554,  # fireboat
            576,  # gondola
            625,  # lifeboat
            628,  # ocean liner
            724,  # pirate ship
            780,  # schooner
            814,  # speedboat
            833,  # submarine
            871,  # trimaran
            914,  # yawl
        ),
        "aircraft": _ids((404, 405), 895),  # airliner, airship, warplane
        # -- food and drink --
        "food": _ids((923, 957), (959, 965)),
        "drink": _ids((966, 969)),
        # -- things in homes and offices --
        "bag": _ids(414, 636, 728, 748),
        "bottle": _ids(440, 720, 737, 898, 907),
        "clock": _ids(409, (530, 531), 826, 892),
        "computer": _ids(508, 527, 590, 620, 673, 681),
        "screen": _ids(664, 782, 851),
        "phone": _ids(487, 528, 707),
        "furniture": _ids(
            423,  # barber chair
            431,  # bassinet
            453,  # bookcase
            (492, 493),  # chest, chiffonier
            495,  # china cabinet
            516,  # cradle
            520,  # crib
            526,  # desk
            532,  # dining table
            548,  # entertainment center
            553,  # file cabinet
            559,  # folding chair
            564,  # four-poster
            648,  # medicine chest
            703,  # park bench
            765,  # rocking chair
            831,  # studio couch
            857,  # throne
            894,  # wardrobe
        ),
        "appliance": _ids(
            521,  # Crock Pot
            534,  # dishwasher
            545,  # electric fan
            550,  # espresso maker
            589,  # hair dryer
            606,  # iron
            651,  # microwave
            760,  # refrigerator
            766,  # rotisserie
            786,  # sewing machine
            811,  # space heater
            827,  # stove
            859,  # toaster
            882,  # vacuum cleaner
            891,  # waffle iron
            897,  # washing machine
        ),
        "clothing": _ids(
            (399, 400),  # abaya, academic gown
            411,  # apron
            443,  # bib
            445,  # bikini
            451,  # bolo tie
            457,  # bow tie
            459,  # brassiere
            474,  # cardigan
            501,  # cloak
            552,  # feather boa
            568,  # fur coat
            578,  # gown
            601,  # hoopskirt
            608,  # jean
            610,  # jersey, T-shirt
            614,  # kimono
            617,  # lab coat
            (638, 639),  # maillot (tights), maillot (swimsuit)
            652,  # military uniform
            655,  # miniskirt
            658,  # mitten
            689,  # overskirt
            697,  # pajama
            735,  # poncho
            775,  # sarong
            806,  # sock
            824,  # stole
            834,  # suit
            (841, 842),  # sweatshirt, swimming trunks
            869,  # trench coat
            887,  # vestment
            906,  # Windsor tie
        ),
        "hat": _ids(
            433,  # bathing cap
            439,  # bearskin
            452,  # bonnet
            515,  # cowboy hat
            518,  # crash helmet
            560,  # football helmet
            667,  # mortarboard
            715,  # pickelhaube
            793,  # shower cap
            808,  # sombrero
        ),
        "shoe": _ids(502, 514, 630, 770, 774),  # clog, cowboy boot, loafer, running shoe, sandal
        "sports ball": _ids(429, 430, 522, 574, 722, 768, 805, 852, 890),
        "musical instrument": _ids(
            (401, 402),  # accordion, acoustic guitar
            420,  # banjo
            432,  # bassoon
            486,  # cello
            494,  # chime
            513,  # cornet
            541,  # drum
            546,  # electric guitar
            558,  # flute
            566,  # French horn
            577,  # gong
            579,  # grand piano
            (593, 594),  # harmonica, harp
            (641, 642),  # maraca, marimba
            (683, 684),  # oboe, ocarina
            687,  # pipe organ
            699,  # panpipe
            776,  # saxophone
            822,  # steel drum
            875,  # trombone
            881,  # upright piano
            889,  # violin
        ),
        # -- nature --
        "landscape": _ids(970, (972, 980)),
        "flower": _ids((985, 986)),
        "fungus": _ids((991, 997)),
    },
    anchors={0: "tench", 151: "Chihuahua", 281: "tabby", 817: "sports car", 999: "toilet tissue"},
)

GROUP_MAPS: dict[str, GroupMap] = {IMAGENET_COARSE.name: IMAGENET_COARSE}


def resolve_groups(name: GroupMapName, id2label: dict[int, str]) -> dict[int, str]:
    """Return the group of each grouped class id of a checkpoint, for the map ``name``.

    Raises ConfigError if the checkpoint's number of classes does not fit the map; logs
    a warning if its class names look like another class order.
    """
    group_map = GROUP_MAPS[name]
    if len(id2label) != group_map.num_classes:
        raise ConfigError(
            f"labels.groups: {name} is for checkpoints with {group_map.num_classes} "
            f"(ImageNet-1k) classes; this model has {len(id2label)}"
        )
    mismatched = [
        class_id
        for class_id, word in group_map.anchors.items()
        # Checkpoints without names say LABEL_<id>; those can't be told apart.
        if not id2label[class_id].startswith("LABEL_")
        and not id2label[class_id].split(",")[0].strip().lower().startswith(word.lower())
    ]
    if mismatched:
        log.warning(
            "labels.groups: %s expects ImageNet-1k class order, but this model's class %d is "
            "%r; check that the groups fit the model",
            name,
            mismatched[0],
            id2label[mismatched[0]],
        )
    return group_map.class_groups()
