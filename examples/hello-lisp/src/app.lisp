;;;; The whole app: four handlers, a static folder and the windlass entry point.
;;;;
;;;; Convention (windlass): MAIN takes no arguments, reads its port from the
;;;; environment variable named by `port_env` (here PORT), starts Hunchentoot
;;;; in the background and returns. windlass keeps the process in the
;;;; foreground and stops every Hunchentoot acceptor gracefully on SIGTERM or
;;;; SIGINT. Nothing may start a thread at load time: the image must be
;;;; savable into an executable.

(in-package :hello-lisp)

(defvar *version* "1"
  "Answered by /version. Change it live through swank:
   (setf hello-lisp:*version* \"2\")")

(defvar *acceptor* nil
  "The running acceptor, or NIL before MAIN.")

(defun static-directory ()
  "Where static/ lives: $HELLO_LISP_STATIC_DIR, else beside the executable
when running from a saved image, else beside the sources."
  (let ((env (uiop:getenv "HELLO_LISP_STATIC_DIR")))
    (cond ((and env (plusp (length env)))
           (uiop:ensure-directory-pathname env))
          (uiop:*image-dumped-p*
           (let ((exe sb-ext:*runtime-pathname*))
             (merge-pathnames "static/"
                              (uiop:pathname-directory-pathname
                               (if (stringp exe) (uiop:parse-native-namestring exe) exe)))))
          (t (asdf:system-relative-pathname "hello-lisp" "static/")))))

(hunchentoot:define-easy-handler (index :uri "/") ()
  (setf (hunchentoot:content-type*) "text/html; charset=utf-8")
  (format nil "<!doctype html>
<html><head><title>hello-lisp</title>
<link rel=\"stylesheet\" href=\"/static/style.css\"></head>
<body><h1>Hello from Common Lisp</h1>
<p>version ~a, served by Hunchentoot under windlass.</p></body></html>
" *version*))

(hunchentoot:define-easy-handler (health :uri "/health") ()
  (setf (hunchentoot:content-type*) "text/plain")
  "ok")

(hunchentoot:define-easy-handler (version :uri "/version") ()
  (setf (hunchentoot:content-type*) "text/plain")
  (princ-to-string *version*))

(hunchentoot:define-easy-handler (slow :uri "/slow") (ms)
  (setf (hunchentoot:content-type*) "text/plain")
  (let ((ms (min 60000 (max 0 (or (and ms (parse-integer ms :junk-allowed t)) 0)))))
    (format t "slow: sleeping ~d ms~%" ms)
    (finish-output)
    (sleep (/ ms 1000))
    (format nil "slept ~d ms" ms)))

(defun port-from-env ()
  (let ((value (uiop:getenv "PORT")))
    (or (and value (parse-integer value :junk-allowed t)) 8080)))

(defun main ()
  "windlass entry point: start Hunchentoot on 127.0.0.1:$PORT and return."
  (let ((port (port-from-env)))
    (setf hunchentoot:*dispatch-table*
          (list (hunchentoot:create-folder-dispatcher-and-handler
                 "/static/" (static-directory))
                'hunchentoot:dispatch-easy-handlers))
    (setf *acceptor*
          (hunchentoot:start
           (make-instance 'hunchentoot:easy-acceptor
                          :address "127.0.0.1"
                          :port port
                          :document-root nil
                          :error-template-directory nil
                          :access-log-destination nil)))
    (format t "hello-lisp ~a listening on 127.0.0.1:~d~%" *version* port)
    (finish-output)
    *acceptor*))
