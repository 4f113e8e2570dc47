;; Fills 16 MiB of memory over and over: one instruction, but a millisecond of work each time.
;; wasmtime charges bulk memory operations fuel per byte, so the budget stops it.
;; expect: sandbox_error out_of_fuel
(module
  (memory (export "memory") 256)
  (func (export "heal") (result i32)
    (loop $l
      (memory.fill (i32.const 0) (i32.const 7) (i32.const 16777216))
      (br $l))
    (i32.const 0)))
