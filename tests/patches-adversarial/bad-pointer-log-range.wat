;; A log line that starts inside memory but runs past its end.
;; expect: sandbox_error bad_pointer
(module
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "heal") (result i32)
    (call $log (i32.const 65000) (i32.const 4096))
    (i32.const 0)))
