/* Error names: wire_strerror covers negated errnos and the project's WIRE_E_* range, so a
 * caller logs any fallible call's result the same way. The WIRE_E_* codes sit far below any
 * errno (Linux errnos stay under 200), so the two ranges never meet. */
#include "wire/wire.h"

#include <string.h>

const char *wire_strerror(int err)
{
    static const char *const names[WIRE_E_LAST - WIRE_E_FIRST + 1] = {
        [WIRE_E_PROTO - WIRE_E_FIRST] = "malformed protocol header",
        [WIRE_E_VERSION - WIRE_E_FIRST] = "protocol version mismatch",
        [WIRE_E_KIND - WIRE_E_FIRST] = "unknown message kind",
        [WIRE_E_FRAMES - WIRE_E_FIRST] = "frame count does not match the header",
        [WIRE_E_SIZE - WIRE_E_FIRST] = "tensor frame size does not match its shape",
        [WIRE_E_LIMIT - WIRE_E_FIRST] = "message exceeds configured limits",
        [WIRE_E_FIELD - WIRE_E_FIRST] = "missing or inconsistent field",
        [WIRE_E_DTYPE - WIRE_E_FIRST] = "unsupported dtype for this shape",
        [WIRE_E_ROUTE - WIRE_E_FIRST] = "missing or bad routing identity",
        [WIRE_E_CHECKSUM - WIRE_E_FIRST] = "checksum mismatch",
    };
    if (err >= WIRE_E_FIRST && err <= WIRE_E_LAST) return names[err - WIRE_E_FIRST];
    /* strerror's buffer is static; the negated errnos used here all have fixed texts. */
    return strerror(err < 0 ? -err : err);
}
