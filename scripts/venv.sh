# Sourced by the scripts: makes sure .venv exists and holds what the given
# requirements file lists, reinstalling only when that file has changed.
# Usage: . scripts/venv.sh requirements-dev.txt
ensure_venv() {
    requirements=$1
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    stamp=".venv/.installed-$(basename "$requirements")"
    wanted=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
        echo "$wanted" >"$stamp"
    fi
}
ensure_venv "${1:-requirements.txt}"
# The analyser's compiled loop (converter/_measure.c), rebuilt when its source is newer.
built=$(.venv/bin/python -c 'from converter.build_measure import target; print(target())')
if [ ! -f "$built" ] || [ converter/_measure.c -nt "$built" ]; then
    .venv/bin/python -m converter.build_measure
fi
