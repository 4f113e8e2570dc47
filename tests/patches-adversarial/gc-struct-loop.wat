;; Allocates GC structs in a loop: outside linear memory, so outside its cap. The GC proposal is off.
;; expect: patch_rejected gc types are disabled
(module (type $s (struct (field i64)))
  (memory (export "memory") 1)
  (func (export "heal") (result i32) (loop $l (drop (struct.new $s (i64.const 1))) (br $l)) (i32.const 0)))
