;; phoenix's address file, through allowed/phoenix-data, a symlink to the data dir (the
;; test creates it).
;; expect: capability_denied phoenix's own files
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/phoenix-data/phoenix.addr\",\"content\":\"127.0.0.1:1\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 88)))
    (i32.const 0)))
