#!/usr/bin/env bash
# Fetch Multi30k task 1 (English-German) raw files from the official repository
# (github.com/multi30k/dataset) into a folder, unzipped, for configs/multi30k_en_de.yaml:
#
#   scripts/download_multi30k.sh [DEST]        (default: data/multi30k-en-de)
#   translator train --config configs/multi30k_en_de.yaml --set data.dir=DEST
#
# Licence: the Multi30k README allows non-commercial research and educational use only, and
# asks you to cite Elliott et al. (2016). Keep the files out of version control.
set -euo pipefail

dest="${1:-data/multi30k-en-de}"
# A fixed commit, so the files are always the same ones (their sha256 are checked below).
commit="a3d2e0d26b56f3846f66a952536ffed4e401d05a"
base="https://raw.githubusercontent.com/multi30k/dataset/${commit}/data/task1/raw"
splits=(train val test_2016_flickr test_2017_flickr test_2017_mscoco test_2018_flickr)

if command -v curl >/dev/null 2>&1; then
  fetch() { curl --fail --location --silent --show-error --retry 3 -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
  fetch() { wget --quiet --tries=3 -O "$2" "$1"; }
else
  echo "download_multi30k.sh: needs curl or wget" >&2
  exit 1
fi

mkdir -p "$dest"
for split in "${splits[@]}"; do
  for lang in en de; do
    out="$dest/$split.$lang"
    if [[ -s "$out" ]]; then
      echo "have $out"
      continue
    fi
    echo "fetching $split.$lang"
    fetch "$base/$split.$lang.gz" "$out.gz.part"
    gunzip -c "$out.gz.part" > "$out.part"
    rm -f "$out.gz.part"
    mv "$out.part" "$out"
  done
done

# The raw files of the pinned commit (the same as in the project's shared data README).
sums="460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6  train.en
2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72  train.de
1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227  val.en
660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660  val.de
399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182  test_2016_flickr.en
4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16  test_2016_flickr.de
ce1450ddc5ab0834502579d77a170849952e15a2938b34cc503bdc25ebb4fb98  test_2017_flickr.en
c3078bc3b36808bf9d20eb2347ed6137016179ef59ec0d2b9b8ecc3fb2880081  test_2017_flickr.de
43051fdfa86fd5395182e718a94ca67b1b227b9f7c79596ff0f6b813216981d2  test_2017_mscoco.en
58277df3c75f92f7145a11b910b553d1cf82c439249d4dc237c899609eafac22  test_2017_mscoco.de
4e585c2dd525911a6ea7730e9d0b516239af3f1b1ffae6a2130223cfb639f25e  test_2018_flickr.en
39fcc8b3331d76fb42d648d019c6898b0d5e58baac87bc2a0bb93f44ec8db207  test_2018_flickr.de"
if command -v sha256sum >/dev/null 2>&1; then
  (cd "$dest" && echo "$sums" | sha256sum --check --quiet) \
    || { echo "download_multi30k.sh: checksum mismatch in $dest" >&2; exit 1; }
fi
echo "Multi30k task 1 en-de is in $dest"
echo "train with: translator train --config configs/multi30k_en_de.yaml --set data.dir=$dest"
