;; A 16-byte memory (1-byte pages, which sit inside one host page): a load that runs past its
;; end traps, though the bytes after it are mapped.
;; expect: sandbox_error out of bounds memory access
(module (memory (export "memory") 16 (pagesize 1))
  (func (export "heal") (result i32) (drop (i32.load (i32.const 14))) (i32.const 0)))
