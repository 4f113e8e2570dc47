;; Overwrites allowed/passwd-link, a symlink to a file outside (the test creates it).
;; expect: apply_failed symlink
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/passwd-link\",\"content\":\"x\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 64)))
    (i32.const 0)))
