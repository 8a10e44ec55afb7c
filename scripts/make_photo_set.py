"""Builds the codec-photo data: real photographs from Debian's desktop-background
packages, split into a training folder and an unseen test folder.

    sudo apt-get install -y mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04
    python3 scripts/make_photo_set.py data/photos     # -> data/photos/{train,test}/*.png

Only photographs are taken (the packages' renderings and abstract art are left
out, by name below). Training pictures are scaled (Lanczos) so the short side
is 512 px; `aezoo train codec-photo-*` cuts random 128x128 crops from them.
Test pictures are scaled to fit 768x512 (Kodak's size), kept out of training
by name, and are what `aezoo rd --images data/photos/test` measures. Scaling
down also removes most of the source JPEGs' own artifacts.
"""
import os
import sys

from PIL import Image

ROOT = "/usr/share/backgrounds"
TRAIN = [
    "mate/nature/Blinds.jpg", "mate/nature/Dune.jpg", "mate/nature/FreshFlower.jpg",
    "mate/nature/Garden.jpg", "mate/nature/GreenMeadow.jpg", "mate/nature/RainDrops.jpg",
    "mate/nature/TwoWings.jpg", "mate/nature/Wood.jpg", "mate/nature/YellowFlower.jpg",
    "Bridge_by_Sander_Klootwijk.jpg", "Kleiber_by_Lukas_Baubkus.jpg",
    "Picture_0B_by_freespace.jpg", "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg",
    "aitzgorri_by_Aitzol_Berasategi.jpg", "analogpattern_by_Peter_Nerlich.jpg",
    "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
    "greentock_by_Peter_Nerlich.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "sunset_by_Aitzol_Berasategi.jpg",
]
TEST = [
    "mate/nature/Aqua.jpg", "mate/nature/LadyBird.jpg", "mate/nature/Storm.jpg",
    "Dragonfly_by_Bolly.jpg", "life_by_Aitzol_Berasategi.jpg", "seeding_by_Clements_Engelhardt.jpg",
]


def main(out):
    missing = [p for p in TRAIN + TEST if not os.path.exists(os.path.join(ROOT, p))]
    if missing:
        sys.exit(f"missing {len(missing)} photographs (first: {ROOT}/{missing[0]}); "
                 "install mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04")
    for split, names, fit in (("train", TRAIN, None), ("test", TEST, (768, 512))):
        os.makedirs(os.path.join(out, split), exist_ok=True)
        for name in names:
            im = Image.open(os.path.join(ROOT, name)).convert("RGB")
            w, h = im.size
            if fit is None:
                s = 512 / min(w, h)
            else:
                fw, fh = fit if w >= h else fit[::-1]
                s = min(fw / w, fh / h)
            im = im.resize((round(w * s), round(h * s)), Image.LANCZOS)
            dst = os.path.join(out, split, os.path.splitext(os.path.basename(name))[0] + ".png")
            im.save(dst)
            print(split, dst, im.size)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/photos")
