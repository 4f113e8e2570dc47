;; Declares an empty body and sends a second request as the body, to smuggle it past the URL check.
;; expect: capability_denied frames and routes
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"http\",\"url\":\"http://127.0.0.1:9/allowed/x\",\"headers\":{\"Content-Length\":\"0\"},\"body\":\"POST /admin/delete HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nContent-Length: 0\\r\\n\\r\\n\"}")
  (func (export "heal") (result i32) (drop (call $action (i32.const 0) (i32.const 170))) (i32.const 0)))
