/* A stand-in for a JIT that uses PEP 523 frame evaluation (torch dynamo does this on 3.11),
 * built by tests/test_callees.py. Like dynamo: enable() saves the interpreter's current
 * frame-evaluation function as `previous` and installs its own, which evaluates every frame
 * with the interpreter's default evaluation (not with `previous`); disable() puts `previous`
 * back. frames() counts the frames it evaluated; hook_is_default() says whether no hook is set. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static _PyFrameEvalFunction previous = NULL;
static unsigned long long frames_seen = 0;

static PyObject *
jit_eval(PyThreadState *tstate, struct _PyInterpreterFrame *frame, int throwflag)
{
    frames_seen++;
    return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
}

static PyObject *
enable(PyObject *self, PyObject *unused)
{
    PyInterpreterState *interp = PyInterpreterState_Get();
    if (_PyInterpreterState_GetEvalFrameFunc(interp) != jit_eval) {
        previous = _PyInterpreterState_GetEvalFrameFunc(interp);
        _PyInterpreterState_SetEvalFrameFunc(interp, jit_eval);
    }
    Py_RETURN_NONE;
}

static PyObject *
disable(PyObject *self, PyObject *unused)
{
    if (previous != NULL) {
        _PyInterpreterState_SetEvalFrameFunc(PyInterpreterState_Get(), previous);
        previous = NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
frames(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(frames_seen);
}

static PyObject *
hook_is_default(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(
        _PyInterpreterState_GetEvalFrameFunc(PyInterpreterState_Get()) == _PyEval_EvalFrameDefault);
}

static PyMethodDef methods[] = {
    {"enable", enable, METH_NOARGS, NULL},
    {"disable", disable, METH_NOARGS, NULL},
    {"frames", frames, METH_NOARGS, NULL},
    {"hook_is_default", hook_is_default, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "jitlike", NULL, -1, methods};

PyMODINIT_FUNC
PyInit_jitlike(void)
{
    return PyModule_Create(&module);
}
