# Sourced by the bench shell scripts (from the repository root): the Makefile's glibc malloc
# settings (~20% faster CPU steps) and the data folder as bench/camvid.py finds it: $U2PLUS_DATA,
# else ../shared/data beside the repository when it exists.
export MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824
if [[ -z ${U2PLUS_DATA:-} && -d ../shared/data ]]; then export U2PLUS_DATA=$(realpath ../shared/data); fi
