;; Plans to overwrite /etc/passwd.
;; expect: capability_denied /etc/passwd
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"/etc/passwd\",\"content\":\"root::0:0::/:/bin/sh\\n\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 77)))
    (i32.const 0)))
