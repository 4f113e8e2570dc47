;; Writes under a symlinked directory inside allowed/.
;; expect: apply_failed resolves outside the writable directories
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/escape/secret\",\"content\":\"x\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 66)))
    (i32.const 0)))
