;; Imports WASI: refused at registration (no WASI for patches).
;; expect: patch_rejected WASI is not available
(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "heal") (result i32) (i32.const 0)))
