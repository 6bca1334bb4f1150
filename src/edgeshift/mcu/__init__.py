"""Cortex-M: compile an int8 model to C (lower → plan → emit), build and run it under QEMU.

Pure steps: :mod:`lower` (ONNX QDQ → :mod:`ir`), :mod:`memory` (the arena plan),
:mod:`emit` (C sources); the numpy golden model is :mod:`reference`. I/O at the edges:
:mod:`compile` (files), :mod:`runner` (arm-none-eabi-gcc, qemu-system-arm).
"""
