;; Sends SIGSTOP (not in phoenix's list).
;; expect: capability_denied not covered
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"signal\",\"program\":\"sshd\",\"signal\":\"STOP\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 50)))
    (i32.const 0)))
