;; An endless loop of tail calls: no stack grows, so only fuel stops it.
;; expect: sandbox_error out_of_fuel
(module (memory (export "memory") 1)
  (func $f (result i32) (return_call $f))
  (func (export "heal") (result i32) (call $f)))
