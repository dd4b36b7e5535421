#!/usr/bin/env bash
# Compile every CUDA kernel file with nvcc for Hopper (sm_90a), the way CI checks kernels
# without a GPU (DESIGN §3). One line per file; exits non-zero on the first failure.
# Without nvcc it only says so and exits 0.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kernels="$root/src/backend/cuda/kernels"

nvcc_bin="$(command -v nvcc || true)"
if [[ -z "$nvcc_bin" ]]; then
  for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
    if [[ -n "$home" && -x "$home/bin/nvcc" ]]; then nvcc_bin="$home/bin/nvcc"; break; fi
  done
fi
if [[ -z "$nvcc_bin" ]]; then
  echo "compile-kernels: nvcc not found (no CUDA toolkit on this machine); kernel files not compiled"
  exit 0
fi

arch="${DSV3_KERNEL_ARCH:-sm_90a}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

shopt -s nullglob
files=("$kernels"/*.cu)
if [[ ${#files[@]} -eq 0 ]]; then
  echo "compile-kernels: no .cu files in $kernels" >&2
  exit 1
fi
for f in "${files[@]}"; do
  name="$(basename "$f" .cu)"
  if "$nvcc_bin" -arch="$arch" -std=c++17 --cubin -I"$kernels" -o "$out/$name.cubin" "$f"; then
    echo "compile-kernels: ok   $name.cu ($arch)"
  else
    echo "compile-kernels: FAIL $name.cu ($arch)" >&2
    exit 1
  fi
done
echo "compile-kernels: ${#files[@]} kernel files compiled with $("$nvcc_bin" --version | tail -n 1)"
