(defpackage :hello-lisp
  (:use :cl)
  (:export #:main #:*version*))
